//! Calls across gateway nodes on one real bus (the machine's Redis and
//! RabbitMQ): a callee on one node, its callers on another. Results,
//! errors, progressive results, the three cancel modes, timeouts, caller
//! identification, pattern registrations; registrations that hold
//! cluster-wide (`single`, shared policies); a callee leaving and a node
//! stopping mid-call. A node killed outright is in `tests/chaos`.
//!
//! Each test uses its own Redis key prefix / RabbitMQ exchange.

use telegraphy_testkit as util;

use std::time::Duration;

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Message, Serialization, Value};
use util::{Client, SharedBus, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

async fn invocation(c: &mut Client) -> (u64, u64, Dict, Vec<Value>) {
    match c.recv().await {
        Message::Invocation { request, registration, details, args, .. } => (request, registration, details, args),
        other => panic!("expected INVOCATION, got {other:?}"),
    }
}

async fn result(c: &mut Client, request: u64) -> (Dict, Vec<Value>, Dict) {
    match c.recv().await {
        Message::Result { request: r, details, args, kwargs } if r == request => (details, args, kwargs),
        other => panic!("expected RESULT for {request}, got {other:?}"),
    }
}

async fn call_error(c: &mut Client, request: u64) -> (String, Vec<Value>, Dict) {
    match c.recv().await {
        Message::Error { request_type: code::CALL, request: r, error, args, kwargs, .. } if r == request => (error, args, kwargs),
        other => panic!("expected ERROR for CALL {request}, got {other:?}"),
    }
}

async fn interrupt(c: &mut Client) -> (u64, Dict) {
    match c.recv().await {
        Message::Interrupt { request, options } => (request, options),
        other => panic!("expected INTERRUPT, got {other:?}"),
    }
}

/// Calls `procedure` once the caller's node knows a callee of it: a
/// `no_such_procedure` (the registration not announced yet) is retried.
/// Returns the request id of the call that went through.
async fn call_known(c: &mut Client, procedure: &str, args: Vec<Value>, options: Dict) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = c.call(procedure, args.clone(), options.clone()).await;
        match tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
            Err(_) => return request,
            Ok(Message::Error { error, request: r, .. }) if r == request && error == err::NO_SUCH_PROCEDURE => {
                assert!(tokio::time::Instant::now() < deadline, "`{procedure}` never became callable from the caller's node");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(other) => panic!("calling {procedure}: unexpected {other:?}"),
        }
    }
}

async fn yield_(c: &mut Client, request: u64, args: Vec<Value>, options: Dict) {
    c.send(&Message::Yield { request, options, args, kwargs: Dict::new() }).await;
}

async fn calls_cross_nodes(bus: SharedBus) {
    let [a, b] = bus.nodes().await;
    let mut callee = Client::join_rpc(&a, MSGPACK).await;
    let mut caller = Client::join_rpc(&b, JSON).await;
    let registration = callee.register("com.math.add", Dict::new()).await;

    // Result, with the caller disclosed on request.
    let request = call_known(&mut caller, "com.math.add", vec![Value::UInt(2), Value::UInt(3)], dict! {"disclose_me" => true}).await;
    let (inv, reg, details, args) = invocation(&mut callee).await;
    assert_eq!((reg, args), (registration, vec![Value::UInt(2), Value::UInt(3)]));
    assert_eq!(details.get("caller"), Some(&Value::UInt(caller.session())), "{details:?}");
    assert_eq!(details.get("caller_authid"), Some(&Value::Str(caller.authid())), "{details:?}");
    callee.send(&Message::Yield { request: inv, options: Dict::new(), args: vec![Value::UInt(5)], kwargs: dict! {"unit" => "apples"} }).await;
    assert_eq!(result(&mut caller, request).await, (Dict::new(), vec![Value::UInt(5)], dict! {"unit" => "apples"}));

    // The callee's error, with its URI, args and kwargs.
    let request = caller.call("com.math.add", vec![Value::Str("x".into())], Dict::new()).await;
    let (inv, _, details, _) = invocation(&mut callee).await;
    assert!(!details.contains_key("caller"), "not disclosed unless asked: {details:?}");
    let error = Message::Error {
        request_type: code::INVOCATION,
        request: inv,
        details: Dict::new(),
        error: "com.math.error.not_a_number".into(),
        args: vec![Value::Str("x".into())],
        kwargs: dict! {"position" => 0u64},
    };
    callee.send(&error).await;
    assert_eq!(
        call_error(&mut caller, request).await,
        ("com.math.error.not_a_number".into(), vec![Value::Str("x".into())], dict! {"position" => 0u64})
    );

    // Progressive results, in order, then the final one.
    let request = caller.call("com.math.add", vec![], dict! {"receive_progress" => true}).await;
    let (inv, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("receive_progress"), Some(&Value::Bool(true)));
    for n in 1..=3u64 {
        yield_(&mut callee, inv, vec![Value::UInt(n)], dict! {"progress" => true}).await;
    }
    yield_(&mut callee, inv, vec![Value::Str("done".into())], Dict::new()).await;
    for n in 1..=3u64 {
        assert_eq!(result(&mut caller, request).await, (dict! {"progress" => true}, vec![Value::UInt(n)], Dict::new()));
    }
    assert_eq!(result(&mut caller, request).await.1, vec![Value::Str("done".into())]);

    // A pattern registration: the callee learns the procedure called.
    callee.register("com.shop.", dict! {"match" => "prefix"}).await;
    let request = call_known(&mut caller, "com.shop.cart.add", vec![], Dict::new()).await;
    let (inv, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("procedure"), Some(&Value::Str("com.shop.cart.add".into())));
    yield_(&mut callee, inv, vec![], Dict::new()).await;
    result(&mut caller, request).await;

    // killnowait: the caller is answered at once, the callee interrupted.
    let request = caller.call("com.math.add", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "killnowait"} }).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED);
    let (interrupted, options) = interrupt(&mut callee).await;
    assert_eq!((interrupted, options.get("mode")), (inv, Some(&Value::Str("killnowait".into()))));

    // kill: the caller waits for the callee's answer.
    let request = caller.call("com.math.add", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "kill"} }).await;
    let (interrupted, options) = interrupt(&mut callee).await;
    assert_eq!((interrupted, options.get("mode")), (inv, Some(&Value::Str("kill".into()))));
    callee
        .send(&Message::Error {
            request_type: code::INVOCATION,
            request: inv,
            details: Dict::new(),
            error: err::CANCELED.into(),
            args: vec![],
            kwargs: Dict::new(),
        })
        .await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED);

    // skip: answered at once, the callee is not told; its late answer is dropped.
    let request = caller.call("com.math.add", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "skip"} }).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED);
    yield_(&mut callee, inv, vec![Value::Str("late".into())], Dict::new()).await;

    // A timeout: the caller gets wamp.error.timeout, the callee an INTERRUPT.
    let request = caller.call("com.math.add", vec![], dict! {"timeout" => 300u64}).await;
    let (inv, ..) = invocation(&mut callee).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::TIMEOUT);
    assert_eq!(interrupt(&mut callee).await.0, inv);

    // The late YIELD of the skipped call never reached the caller: the next
    // thing it gets is this call's result.
    let request = caller.call("com.math.add", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    yield_(&mut callee, inv, vec![Value::Str("last".into())], Dict::new()).await;
    assert_eq!(result(&mut caller, request).await.1, vec![Value::Str("last".into())]);

    // The callee leaves mid-call: the caller's call fails, it does not hang.
    let mut other = Client::join_rpc(&a, JSON).await;
    other.register("com.slow", Dict::new()).await;
    let request = call_known(&mut caller, "com.slow", vec![], Dict::new()).await;
    invocation(&mut other).await;
    drop(other);
    let (error, args, _) = call_error(&mut caller, request).await;
    assert_eq!(error, err::CANCELED, "{args:?}");

    // The caller leaves mid-call: the callee is interrupted.
    let request = caller.call("com.math.add", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    let _ = request;
    drop(caller);
    let (interrupted, options) = interrupt(&mut callee).await;
    assert_eq!((interrupted, options.get("reason")), (inv, Some(&Value::Str("wamp.close.caller_left".into()))));
}

#[tokio::test]
async fn redis_calls_cross_nodes() {
    calls_cross_nodes(SharedBus::redis("test-rpc")).await;
}

#[tokio::test]
async fn amqp_calls_cross_nodes() {
    calls_cross_nodes(SharedBus::amqp("telegraphy-test-rpc")).await;
}

async fn registrations_hold_cluster_wide(bus: SharedBus) {
    let [a, b] = bus.nodes().await;
    let mut on_a = Client::join_rpc(&a, JSON).await;
    let mut on_b = Client::join_rpc(&b, MSGPACK).await;
    let mut caller = Client::join_rpc(&b, JSON).await;

    // `single` anywhere refuses a second registration everywhere.
    on_a.register("com.single", Dict::new()).await;
    let request = call_known(&mut caller, "com.single", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut on_a).await;
    yield_(&mut on_a, inv, vec![], Dict::new()).await;
    result(&mut caller, request).await;
    for options in [Dict::new(), dict! {"invoke" => "roundrobin"}] {
        let request = on_b.request_id();
        on_b.send(&Message::Register { request, options, procedure: "com.single".into() }).await;
        match on_b.recv().await {
            Message::Error { request_type: code::REGISTER, error, args, .. } => {
                assert_eq!(error, err::PROCEDURE_ALREADY_EXISTS);
                assert!(format!("{args:?}").contains("another gateway node"), "{args:?}");
            }
            other => panic!("expected ERROR procedure_already_exists, got {other:?}"),
        }
    }

    // A shared registration spreads calls over the callees of every node.
    on_a.register("com.shared", dict! {"invoke" => "roundrobin"}).await;
    call_known(&mut caller, "com.shared", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut on_a).await;
    yield_(&mut on_a, inv, vec![], Dict::new()).await;
    caller.recv().await;
    on_b.register("com.shared", dict! {"invoke" => "roundrobin"}).await;
    let mut served = [0, 0];
    for _ in 0..6 {
        let request = caller.call("com.shared", vec![], Dict::new()).await;
        let served_by = tokio::select! {
            m = on_a.recv() => { let Message::Invocation { request, .. } = m else { panic!("{m:?}") }; yield_(&mut on_a, request, vec![], Dict::new()).await; 0 }
            m = on_b.recv() => { let Message::Invocation { request, .. } = m else { panic!("{m:?}") }; yield_(&mut on_b, request, vec![], Dict::new()).await; 1 }
        };
        served[served_by] += 1;
        result(&mut caller, request).await;
    }
    assert_eq!(served, [3, 3], "roundrobin over the callees of both nodes");

    // Another policy for the same procedure is refused, wherever it is asked.
    let mut late = Client::join_rpc(&b, JSON).await;
    let request = late.request_id();
    late.send(&Message::Register { request, options: dict! {"invoke" => "random"}, procedure: "com.shared".into() }).await;
    match late.recv().await {
        Message::Error { error, .. } => assert_eq!(error, err::PROCEDURE_EXISTS_WITH_DIFFERENT_INVOCATION_POLICY),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn redis_registrations_hold_cluster_wide() {
    registrations_hold_cluster_wide(SharedBus::redis("test-rpc")).await;
}

#[tokio::test]
async fn amqp_registrations_hold_cluster_wide() {
    registrations_hold_cluster_wide(SharedBus::amqp("telegraphy-test-rpc")).await;
}

/// The callee's node drains (SIGTERM): its callee's call fails for the
/// caller on the other node, and its registrations are gone at once.
async fn a_stopping_node_fails_its_calls(bus: SharedBus) {
    let [mut a, b] = bus.nodes().await;
    let mut callee = Client::join_rpc(&a, JSON).await;
    let mut caller = Client::join_rpc(&b, JSON).await;
    callee.register("com.busy", Dict::new()).await;
    let request = call_known(&mut caller, "com.busy", vec![], Dict::new()).await;
    invocation(&mut callee).await;
    a.shutdown();
    let (error, args, _) = tokio::time::timeout(Duration::from_secs(10), call_error(&mut caller, request)).await.expect("the call fails");
    assert_eq!(error, err::CANCELED, "{args:?}");
    // Gone once the node said goodbye (well before the silence expiry).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let request = caller.call("com.busy", vec![], Dict::new()).await;
        let (error, ..) = call_error(&mut caller, request).await;
        if error == err::NO_SUCH_PROCEDURE {
            break;
        }
        assert_eq!(error, err::CALLEE_UNAVAILABLE, "while the node stops");
        assert!(tokio::time::Instant::now() < deadline, "the stopped node's registration is still routed to");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_a_stopping_node_fails_its_calls() {
    a_stopping_node_fails_its_calls(SharedBus::redis("test-rpc")).await;
}

#[tokio::test]
async fn amqp_a_stopping_node_fails_its_calls() {
    a_stopping_node_fails_its_calls(SharedBus::amqp("telegraphy-test-rpc")).await;
}

/// Two nodes register one `single` procedure at the same moment, before
/// either heard of the other's: the registration made first keeps it, the
/// other is revoked (UNREGISTERED with a reason), and every node routes to
/// the one that kept it.
async fn a_registration_race_ends_with_one_callee(bus: SharedBus) {
    let [a, b, c] = bus.nodes().await;
    let mut on_a = Client::join_rpc(&a, JSON).await;
    let mut on_b = Client::join_rpc(&b, JSON).await;
    let mut caller = Client::join_rpc(&c, JSON).await;
    let (ra, rb) = (on_a.request_id(), on_b.request_id());
    let register = |request| Message::Register { request, options: Dict::new(), procedure: "com.race".into() };
    on_a.send(&register(ra)).await;
    on_b.send(&register(rb)).await;
    let mut holders = Vec::new();
    for (n, c) in [&mut on_a, &mut on_b].into_iter().enumerate() {
        match c.recv().await {
            Message::Registered { registration, .. } => holders.push((n, registration)),
            Message::Error { error, .. } => assert_eq!(error, err::PROCEDURE_ALREADY_EXISTS),
            other => panic!("expected REGISTERED or ERROR, got {other:?}"),
        }
    }
    assert!(!holders.is_empty(), "one of them registered");
    let winner = if holders.len() == 2 {
        // Both registered: one is revoked once the announcements crossed.
        let revoked = tokio::select! {
            m = on_a.recv() => (0, m),
            m = on_b.recv() => (1, m),
        };
        let (loser, Message::Unregistered { request: 0, details }) = revoked else { panic!("expected a revocation, got {revoked:?}") };
        assert_eq!(details.get("registration"), Some(&Value::UInt(holders[loser].1)), "{details:?}");
        assert!(details.contains_key("reason"), "{details:?}");
        1 - loser
    } else {
        holders[0].0
    };
    // Calls from the third node reach the winner only.
    let mut clients = [on_a, on_b];
    let request = call_known(&mut caller, "com.race", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut clients[winner]).await;
    yield_(&mut clients[winner], inv, vec![], Dict::new()).await;
    result(&mut caller, request).await;
    for _ in 0..3 {
        let request = caller.call("com.race", vec![], Dict::new()).await;
        let (inv, ..) = invocation(&mut clients[winner]).await;
        yield_(&mut clients[winner], inv, vec![], Dict::new()).await;
        result(&mut caller, request).await;
    }
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), clients[1 - winner].recv()).await {
        panic!("the callee that lost the race got {m:?}");
    }
}

#[tokio::test]
async fn redis_a_registration_race_ends_with_one_callee() {
    a_registration_race_ends_with_one_callee(SharedBus::redis("test-rpc")).await;
}

#[tokio::test]
async fn amqp_a_registration_race_ends_with_one_callee() {
    a_registration_race_ends_with_one_callee(SharedBus::amqp("telegraphy-test-rpc")).await;
}

/// Redis (a private instance) goes away with a call in flight between two
/// nodes: the call fails (it never hangs), calls fail clearly while the bus
/// is down, and once Redis is back the procedure is callable again.
#[tokio::test]
async fn redis_outage_mid_call_fails_the_call_and_recovers() {
    let mut server = util::RedisServer::start();
    let config = || {
        let mut c = util::config();
        c.limits.bus_reconnect_max_delay = Duration::from_millis(500);
        c.bus = server.url();
        c.redis.key_prefix = "rpc-outage:".into();
        c
    };
    let a = TestGateway::start_ready(config()).await;
    let b = TestGateway::start_ready(config()).await;
    let mut callee = Client::join_rpc(&a, JSON).await;
    let mut caller = Client::join_rpc(&b, MSGPACK).await;
    callee.register("com.outage", Dict::new()).await;
    let request = call_known(&mut caller, "com.outage", vec![], Dict::new()).await;
    let (first, ..) = invocation(&mut callee).await;

    server.kill();
    let (error, args, _) = tokio::time::timeout(Duration::from_secs(10), call_error(&mut caller, request)).await.expect("the call fails");
    assert!([err::CANCELED, err::CALLEE_UNAVAILABLE].contains(&error.as_str()), "{error} {args:?}");
    // While the bus is down: refused at once, with a reason.
    let request = caller.call("com.outage", vec![], Dict::new()).await;
    let (error, args, _) = call_error(&mut caller, request).await;
    assert!([err::NO_SUCH_PROCEDURE, err::CALLEE_UNAVAILABLE].contains(&error.as_str()), "{error} {args:?}");

    server.spawn();
    assert!(a.wait_ready(true, Duration::from_secs(20)).await && b.wait_ready(true, Duration::from_secs(20)).await);
    let request = call_known(&mut caller, "com.outage", vec![Value::UInt(1)], Dict::new()).await;
    // The callee's node abandoned the first call (its caller's node failed
    // it): the callee is interrupted (before or after the new call arrives).
    let (mut inv, mut interrupted) = (None, false);
    while inv.is_none() || !interrupted {
        match callee.recv().await {
            Message::Interrupt { request, options } if request == first => {
                assert_eq!(options.get("mode"), Some(&Value::Str("killnowait".into())));
                interrupted = true;
            }
            Message::Invocation { request, args, .. } => {
                assert_eq!(args, vec![Value::UInt(1)]);
                inv = Some(request);
            }
            other => panic!("expected the INTERRUPT of the first call and the new INVOCATION, got {other:?}"),
        }
    }
    let inv = inv.expect("the new call");
    yield_(&mut callee, inv, vec![Value::Str("back".into())], Dict::new()).await;
    assert_eq!(result(&mut caller, request).await.1, vec![Value::Str("back".into())]);
}

/// `first` and `last` pick the callee that registered first / last in the
/// whole cluster, wherever the caller is.
#[tokio::test]
async fn redis_first_and_last_span_the_cluster() {
    let bus = SharedBus::redis("test-rpc");
    let [a, b] = bus.nodes().await;
    let mut early = Client::join_rpc(&a, JSON).await;
    let mut late = Client::join_rpc(&b, JSON).await;
    let mut caller = Client::join_rpc(&b, JSON).await;
    for (policy, procedure) in [("first", "com.standby"), ("last", "com.newest")] {
        early.register(procedure, dict! {"invoke" => policy}).await;
        // The second registration comes once the first is known on its node.
        let request = call_known(&mut caller, procedure, vec![], Dict::new()).await;
        let (inv, ..) = invocation(&mut early).await;
        yield_(&mut early, inv, vec![], Dict::new()).await;
        result(&mut caller, request).await;
        late.register(procedure, dict! {"invoke" => policy}).await;
        let (chosen, other) = if policy == "first" { (&mut early, &mut late) } else { (&mut late, &mut early) };
        for _ in 0..3 {
            let request = caller.call(procedure, vec![], Dict::new()).await;
            let (inv, ..) = invocation(chosen).await;
            yield_(chosen, inv, vec![], Dict::new()).await;
            result(&mut caller, request).await;
        }
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), other.recv()).await {
            panic!("invoke `{policy}`: the other callee got {m:?}");
        }
    }
}
