//! The dealer on one node, message by message: REGISTER/CALL/INVOCATION/
//! YIELD/RESULT, callee errors, progressive results, the three cancel
//! modes, timeouts, caller identification, shared and pattern-based
//! registrations, revocation, sessions leaving mid-call, rights and limits.
//! Real gateway, real WebSocket clients (the testkit's); the third-party
//! clients (AutobahnJS, AutobahnPython) are in `tests/interop`.

use telegraphy_testkit as util;

use std::time::{Duration, Instant};

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Message, Serialization, Value};
use util::{Client, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

/// The next INVOCATION: (request, registration, details, args).
async fn invocation(c: &mut Client) -> (u64, u64, Dict, Vec<Value>) {
    match c.recv().await {
        Message::Invocation { request, registration, details, args, .. } => (request, registration, details, args),
        other => panic!("expected INVOCATION, got {other:?}"),
    }
}

/// The next RESULT for `request`: (details, args, kwargs).
async fn result(c: &mut Client, request: u64) -> (Dict, Vec<Value>, Dict) {
    match c.recv().await {
        Message::Result { request: r, details, args, kwargs } if r == request => (details, args, kwargs),
        other => panic!("expected RESULT for {request}, got {other:?}"),
    }
}

/// The next ERROR for CALL `request`: (error URI, args).
async fn call_error(c: &mut Client, request: u64) -> (String, Vec<Value>) {
    match c.recv().await {
        Message::Error { request_type: code::CALL, request: r, error, args, .. } if r == request => (error, args),
        other => panic!("expected ERROR for CALL {request}, got {other:?}"),
    }
}

async fn yield_(c: &mut Client, request: u64, args: Vec<Value>, options: Dict) {
    c.send(&Message::Yield { request, options, args, kwargs: Dict::new() }).await;
}

/// Nothing arrives for `c` within a short while (a fence would need a
/// third party; the dealer answers synchronously, so 200 ms is ample).
async fn nothing_for(c: &mut Client, what: &str) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
        panic!("{what}: unexpected {m:?}");
    }
}

#[tokio::test]
async fn call_result_and_callee_error_across_serializers() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, MSGPACK).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    let registration = callee.register("com.math.add", Dict::new()).await;

    let request = caller.call("com.math.add", vec![Value::UInt(2), Value::UInt(3)], Dict::new()).await;
    let (inv, reg, details, args) = invocation(&mut callee).await;
    assert_eq!(reg, registration);
    assert_eq!(args, vec![Value::UInt(2), Value::UInt(3)]);
    assert!(!details.contains_key("caller"), "the caller is not disclosed unless asked: {details:?}");
    assert!(!details.contains_key("procedure"), "an exact registration gets no procedure detail");
    callee.send(&Message::Yield { request: inv, options: Dict::new(), args: vec![Value::UInt(5)], kwargs: dict! {"unit" => "apples"} }).await;
    let (details, args, kwargs) = result(&mut caller, request).await;
    assert_eq!((details, args, kwargs), (Dict::new(), vec![Value::UInt(5)], dict! {"unit" => "apples"}));

    // The callee's error reaches the caller with its URI, args and kwargs.
    let request = caller.call("com.math.add", vec![Value::Str("x".into())], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    callee
        .send(&Message::Error {
            request_type: code::INVOCATION,
            request: inv,
            details: Dict::new(),
            error: "com.math.error.not_a_number".into(),
            args: vec![Value::Str("x is not a number".into())],
            kwargs: dict! {"argument" => 0u64},
        })
        .await;
    match caller.recv().await {
        Message::Error { request_type: code::CALL, request: r, error, args, kwargs, .. } => {
            assert_eq!((r, error.as_str()), (request, "com.math.error.not_a_number"));
            assert_eq!((args, kwargs), (vec![Value::Str("x is not a number".into())], dict! {"argument" => 0u64}));
        }
        other => panic!("expected the callee's ERROR, got {other:?}"),
    }
    assert!(gw.metric("telegraphy_rpc_calls_total{outcome=\"result\"}").await >= 1.0);
    assert!(gw.metric("telegraphy_rpc_calls_total{outcome=\"error\"}").await >= 1.0);
    assert_eq!(gw.metric("telegraphy_rpc_calls_in_flight").await, 0.0);
    assert_eq!(gw.metric("telegraphy_rpc_registrations").await, 1.0);
}

#[tokio::test]
async fn welcome_announces_the_dealer_features() {
    let gw = TestGateway::start().await;
    let c = Client::join_rpc(&gw, JSON).await;
    let Some(Value::Dict(roles)) = c.details().get("roles") else { panic!("roles") };
    let Some(Value::Dict(dealer)) = roles.get("dealer") else { panic!("a dealer role: {roles:?}") };
    let Some(Value::Dict(features)) = dealer.get("features") else { panic!("features") };
    for f in [
        "progressive_call_results",
        "call_canceling",
        "call_timeout",
        "caller_identification",
        "shared_registration",
        "pattern_based_registration",
        "registration_revocation",
    ] {
        assert_eq!(features.get(f), Some(&Value::Bool(true)), "{f}");
    }
}

#[tokio::test]
async fn progressive_results_only_when_both_sides_take_them() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.report.build", Dict::new()).await;

    let request = caller.call("com.report.build", vec![], dict! {"receive_progress" => true}).await;
    let (inv, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("receive_progress"), Some(&Value::Bool(true)));
    for pct in [25u64, 50, 75] {
        yield_(&mut callee, inv, vec![Value::UInt(pct)], dict! {"progress" => true}).await;
    }
    yield_(&mut callee, inv, vec![Value::Str("done".into())], Dict::new()).await;
    for pct in [25u64, 50, 75] {
        let (details, args, _) = result(&mut caller, request).await;
        assert_eq!((details, args), (dict! {"progress" => true}, vec![Value::UInt(pct)]));
    }
    let (details, args, _) = result(&mut caller, request).await;
    assert_eq!((details, args), (Dict::new(), vec![Value::Str("done".into())]), "the final result has no progress flag");

    // A caller that did not ask gets the final result only.
    let request = caller.call("com.report.build", vec![], Dict::new()).await;
    let (inv, _, details, _) = invocation(&mut callee).await;
    assert!(!details.contains_key("receive_progress"));
    yield_(&mut callee, inv, vec![Value::UInt(50)], dict! {"progress" => true}).await;
    yield_(&mut callee, inv, vec![Value::Str("done".into())], Dict::new()).await;
    let (details, args, _) = result(&mut caller, request).await;
    assert_eq!((details, args), (Dict::new(), vec![Value::Str("done".into())]));
}

#[tokio::test]
async fn cancel_skip_kill_and_killnowait() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.slow", Dict::new()).await;

    // skip: the caller is answered at once; the callee is not told, and its late answer is dropped.
    let request = caller.call("com.slow", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "skip"} }).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED);
    nothing_for(&mut callee, "skip sends no INTERRUPT").await;
    yield_(&mut callee, inv, vec![], Dict::new()).await;
    nothing_for(&mut caller, "the late YIELD of a skipped call").await;

    // killnowait (the default): the callee gets INTERRUPT, the caller its ERROR at once.
    let request = caller.call("com.slow", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: Dict::new() }).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED);
    match callee.recv().await {
        Message::Interrupt { request, options } => assert_eq!((request, options.get("mode")), (inv, Some(&Value::Str("killnowait".into())))),
        other => panic!("expected INTERRUPT, got {other:?}"),
    }

    // kill: the caller waits for the callee's answer, which becomes the cancel's ERROR.
    let request = caller.call("com.slow", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "kill"} }).await;
    match callee.recv().await {
        Message::Interrupt { request, options } => assert_eq!((request, options.get("mode")), (inv, Some(&Value::Str("kill".into())))),
        other => panic!("expected INTERRUPT, got {other:?}"),
    }
    nothing_for(&mut caller, "kill waits for the callee").await;
    callee
        .send(&Message::Error {
            request_type: code::INVOCATION,
            request: inv,
            details: Dict::new(),
            error: err::CANCELED.into(),
            args: vec![Value::Str("stopped at 40%".into())],
            kwargs: Dict::new(),
        })
        .await;
    let (error, args) = call_error(&mut caller, request).await;
    assert_eq!((error.as_str(), args), (err::CANCELED, vec![Value::Str("stopped at 40%".into())]));
    assert_eq!(gw.metric("telegraphy_rpc_calls_in_flight").await, 0.0);
}

#[tokio::test]
async fn a_callee_without_call_canceling_is_never_interrupted() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join(&gw, JSON).await; // announces no callee features
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.plain", Dict::new()).await;
    let request = caller.call("com.plain", vec![], Dict::new()).await;
    invocation(&mut callee).await;
    caller.send(&Message::Cancel { request, options: dict! {"mode" => "kill"} }).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::CANCELED, "kill falls back to skip");
    nothing_for(&mut callee, "no INTERRUPT for a callee that cannot take one").await;
}

#[tokio::test]
async fn timeout_fails_the_call_and_interrupts_the_callee() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.never", Dict::new()).await;
    let started = Instant::now();
    let request = caller.call("com.never", vec![], dict! {"timeout" => 300u64}).await;
    let (inv, ..) = invocation(&mut callee).await;
    let (error, args) = call_error(&mut caller, request).await;
    assert_eq!(error, err::TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    assert!(args[0].as_str().unwrap().contains("300 ms"), "{args:?}");
    match callee.recv().await {
        Message::Interrupt { request, options } => {
            assert_eq!(request, inv);
            assert_eq!(options.get("reason"), Some(&Value::Str(err::TIMEOUT.into())));
        }
        other => panic!("expected INTERRUPT, got {other:?}"),
    }
    // An answer in time cancels the timer: no late timeout ERROR.
    let request = caller.call("com.never", vec![], dict! {"timeout" => 300u64}).await;
    let (inv, ..) = invocation(&mut callee).await;
    yield_(&mut callee, inv, vec![Value::UInt(1)], Dict::new()).await;
    result(&mut caller, request).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    nothing_for(&mut caller, "a timer that should have been stopped").await;
    assert!(gw.metric("telegraphy_rpc_calls_total{outcome=\"timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn caller_identification() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.whoami", Dict::new()).await;
    caller.call("com.whoami", vec![], dict! {"disclose_me" => true}).await;
    let (_, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("caller"), Some(&Value::UInt(caller.session())));
    assert_eq!(details.get("caller_authid"), Some(&Value::Str(caller.authid())));
    assert_eq!(details.get("caller_authrole"), Some(&Value::Str("anonymous".into())));

    // disclose_caller on the registration discloses every caller.
    callee.register("com.audit", dict! {"disclose_caller" => true}).await;
    caller.call("com.audit", vec![], Dict::new()).await;
    let (_, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("caller"), Some(&Value::UInt(caller.session())));
}

#[tokio::test]
async fn pattern_registrations_and_the_best_match() {
    let gw = TestGateway::start().await;
    let mut exact = Client::join_rpc(&gw, JSON).await;
    let mut prefix = Client::join_rpc(&gw, JSON).await;
    let mut wildcard = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    let r_exact = exact.register("com.shop.cart.add", Dict::new()).await;
    let r_prefix = prefix.register("com.shop", dict! {"match" => "prefix"}).await;
    let r_wild = wildcard.register("com..cart.remove", dict! {"match" => "wildcard"}).await;

    caller.call("com.shop.cart.add", vec![], Dict::new()).await;
    let (_, reg, details, _) = invocation(&mut exact).await;
    assert_eq!((reg, details.get("procedure")), (r_exact, None), "exact wins");

    caller.call("com.shop.cart.remove", vec![], Dict::new()).await;
    let (_, reg, details, _) = invocation(&mut prefix).await;
    assert_eq!((reg, details.get("procedure")), (r_prefix, Some(&Value::Str("com.shop.cart.remove".into()))), "a prefix wins over a wildcard");

    caller.call("com.garden.cart.remove", vec![], Dict::new()).await;
    let (_, reg, details, _) = invocation(&mut wildcard).await;
    assert_eq!((reg, details.get("procedure")), (r_wild, Some(&Value::Str("com.garden.cart.remove".into()))));

    let request = caller.call("org.other", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::NO_SUCH_PROCEDURE);
}

#[tokio::test]
async fn shared_registrations_follow_their_invocation_policy() {
    let gw = TestGateway::start().await;
    let mut callees = Vec::new();
    for _ in 0..3 {
        callees.push(Client::join_rpc(&gw, JSON).await);
    }
    let mut caller = Client::join_rpc(&gw, JSON).await;

    for (policy, expected) in [("roundrobin", vec![0usize, 1, 2, 0, 1, 2]), ("first", vec![0; 4]), ("last", vec![2; 4])] {
        let procedure = format!("com.pool.{policy}");
        let mut ids = Vec::new();
        for c in callees.iter_mut() {
            ids.push(c.register(&procedure, dict! {"invoke" => policy}).await);
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one registration, shared: {ids:?}");
        for (n, want) in expected.iter().enumerate() {
            let request = caller.call(&procedure, vec![Value::UInt(n as u64)], Dict::new()).await;
            let (inv, _, _, args) = invocation(&mut callees[*want]).await;
            assert_eq!(args, vec![Value::UInt(n as u64)], "{policy}: call {n} went to callee {want}");
            yield_(&mut callees[*want], inv, vec![], Dict::new()).await;
            result(&mut caller, request).await;
        }
    }

    // random: every call reaches one of the callees, and all of them in the long run.
    let mut hits = [0usize; 3];
    for c in callees.iter_mut() {
        c.register("com.pool.random", dict! {"invoke" => "random"}).await;
    }
    for n in 0..60 {
        let request = caller.call("com.pool.random", vec![Value::UInt(n)], Dict::new()).await;
        let got = loop {
            let mut found = None;
            for (i, c) in callees.iter_mut().enumerate() {
                if let Ok(Message::Invocation { request, .. }) = tokio::time::timeout(Duration::from_millis(20), c.recv()).await {
                    found = Some((i, request));
                    break;
                }
            }
            if let Some(f) = found {
                break f;
            }
        };
        hits[got.0] += 1;
        yield_(&mut callees[got.0], got.1, vec![], Dict::new()).await;
        result(&mut caller, request).await;
    }
    assert!(hits.iter().all(|&h| h > 0), "random reached every callee in 60 calls: {hits:?}");

    // single refuses a second callee; a different policy is refused too.
    let mut extra = Client::join_rpc(&gw, JSON).await;
    callees[0].register("com.solo", Dict::new()).await;
    for (options, expected) in [(Dict::new(), err::PROCEDURE_ALREADY_EXISTS), (dict! {"invoke" => "roundrobin"}, err::PROCEDURE_ALREADY_EXISTS)] {
        let request = extra.request_id();
        extra.send(&Message::Register { request, options, procedure: "com.solo".into() }).await;
        match extra.recv().await {
            Message::Error { request_type: code::REGISTER, error, .. } => assert_eq!(error, expected),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    let request = extra.request_id();
    extra.send(&Message::Register { request, options: dict! {"invoke" => "first"}, procedure: "com.pool.roundrobin".into() }).await;
    match extra.recv().await {
        Message::Error { error, .. } => assert_eq!(error, err::PROCEDURE_EXISTS_WITH_DIFFERENT_INVOCATION_POLICY),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn a_callee_leaving_fails_its_calls_and_frees_its_registrations() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.fragile", Dict::new()).await;
    let first = caller.call("com.fragile", vec![], Dict::new()).await;
    let second = caller.call("com.fragile", vec![], dict! {"timeout" => 60_000u64}).await;
    invocation(&mut callee).await;
    invocation(&mut callee).await;
    drop(callee); // the connection drops without GOODBYE
    let mut failed = Vec::new();
    for _ in 0..2 {
        match caller.recv().await {
            Message::Error { request_type: code::CALL, request, error, args, .. } => {
                assert_eq!(error, err::CANCELED);
                assert!(args[0].as_str().unwrap().contains("callee"), "{args:?}");
                failed.push(request);
            }
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    failed.sort();
    assert_eq!(failed, vec![first, second]);
    let request = caller.call("com.fragile", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::NO_SUCH_PROCEDURE, "its registration went with it");
    // Another session may register the procedure now.
    let mut next = Client::join_rpc(&gw, JSON).await;
    next.register("com.fragile", Dict::new()).await;
    assert_eq!(gw.metric("telegraphy_rpc_calls_total{outcome=\"callee_lost\"}").await, 2.0);
    assert_eq!(gw.metric("telegraphy_rpc_calls_in_flight").await, 0.0);
}

#[tokio::test]
async fn a_caller_leaving_interrupts_its_calls() {
    let gw = TestGateway::start().await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.long", Dict::new()).await;
    caller.call("com.long", vec![], Dict::new()).await;
    let (inv, ..) = invocation(&mut callee).await;
    drop(caller);
    match callee.recv().await {
        Message::Interrupt { request, options } => assert_eq!((request, options.get("mode")), (inv, Some(&Value::Str("killnowait".into())))),
        other => panic!("expected INTERRUPT, got {other:?}"),
    }
    yield_(&mut callee, inv, vec![], Dict::new()).await; // dropped: nobody waits
    util::eventually("no call in flight", Duration::from_secs(5), || async { gw.metric("telegraphy_rpc_calls_in_flight").await == 0.0 }).await;
}

#[tokio::test]
async fn unregister_and_revocation_by_force_reregister() {
    let gw = TestGateway::start().await;
    let mut old = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    let registration = old.register("com.worker", Dict::new()).await;
    let request = old.request_id();
    old.send(&Message::Unregister { request, registration }).await;
    assert!(matches!(old.recv().await, Message::Unregistered { request: r, .. } if r == request));
    let request = caller.call("com.worker", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut caller, request).await.0, err::NO_SUCH_PROCEDURE);

    // A worker's new session replaces its stale one (same authid: a CRA
    // or JWT user; anonymous sessions each have their own authid, so here
    // a second anonymous session is refused).
    let registration = old.register("com.worker", Dict::new()).await;
    let mut other = Client::join_rpc(&gw, JSON).await;
    let request = other.request_id();
    other.send(&Message::Register { request, options: dict! {"force_reregister" => true}, procedure: "com.worker".into() }).await;
    match other.recv().await {
        Message::Error { error, .. } => assert_eq!(error, err::PROCEDURE_ALREADY_EXISTS, "another authid may not take it over"),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // The same session cannot register twice either.
    let request = old.request_id();
    old.send(&Message::Register { request, options: Dict::new(), procedure: "com.worker".into() }).await;
    assert!(matches!(old.recv().await, Message::Error { error, .. } if error == err::PROCEDURE_ALREADY_EXISTS));
    let _ = registration;
}

#[tokio::test]
async fn force_reregister_revokes_the_same_users_old_registration() {
    let mut config = util::config();
    config.auth.cra =
        vec![telegraphy_gateway::config::CraUser { authid: "worker".into(), secret: "s3cret-worker-0123456789".into(), role: "anonymous".into() }];
    let gw = TestGateway::start_with(config).await;
    let mut old = join_cra(&gw, "worker", "s3cret-worker-0123456789").await;
    let mut new = join_cra(&gw, "worker", "s3cret-worker-0123456789").await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    let registration = old.register("com.worker", Dict::new()).await;
    let replaced = new.register("com.worker", dict! {"force_reregister" => true}).await;
    assert_eq!(replaced, registration, "the registration stays, its callee changes");
    match old.recv().await {
        Message::Unregistered { request: 0, details } => {
            assert_eq!(details.get("registration"), Some(&Value::UInt(registration)));
            assert!(details.contains_key("reason"));
        }
        other => panic!("expected UNREGISTERED 0 (revocation), got {other:?}"),
    }
    caller.call("com.worker", vec![], Dict::new()).await;
    invocation(&mut new).await;
}

/// Joins as a CRA user announcing every callee feature.
async fn join_cra(gw: &TestGateway, authid: &str, secret: &str) -> Client {
    let mut hello = util::hello_with("realm1", &["wampcra"], Some(authid));
    let Message::Hello { details, .. } = &mut hello else { unreachable!() };
    let features = dict! {"registration_revocation" => true, "call_canceling" => true, "progressive_call_results" => true};
    details.insert("roles".into(), Value::Dict(dict! {"callee" => Value::Dict(dict! {"features" => Value::Dict(features)})}));
    let mut c = Client::open(gw, JSON).await;
    c.send(&hello).await;
    let Message::Challenge { extra, .. } = c.recv().await else { panic!("CHALLENGE expected") };
    let challenge = extra["challenge"].as_str().unwrap().to_string();
    let signature = telegraphy_gateway::harness::cra_sign(secret, &challenge);
    c.send(&Message::Authenticate { signature, extra: Dict::new() }).await;
    match c.recv().await {
        Message::Welcome { .. } => c,
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

#[tokio::test]
async fn rights_rates_and_limits() {
    let mut config = util::config();
    config.limits.max_calls_per_session = 2;
    config.limits.max_registrations_per_session = 1;
    let role = config.roles.get_mut("anonymous").unwrap();
    (role.call_rate, role.call_burst) = (0.1, 3);
    let gw = TestGateway::start_with(config).await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.public.slow", Dict::new()).await;

    // Limits: calls in flight, registrations held; then the role's rate.
    let a = caller.call("com.public.slow", vec![], Dict::new()).await;
    let b = caller.call("com.public.slow", vec![], Dict::new()).await;
    let c = caller.call("com.public.slow", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut caller, c).await.0, err::LIMIT_EXCEEDED);
    let d = caller.call("com.public.slow", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut caller, d).await.0, err::RATE_LIMITED, "a burst of 3, then 1 call per 10 s");
    for _ in [a, b] {
        let (inv, ..) = invocation(&mut callee).await;
        yield_(&mut callee, inv, vec![], Dict::new()).await;
    }
    for request in [a, b] {
        result(&mut caller, request).await;
    }
    let request = callee.request_id();
    callee.send(&Message::Register { request, options: Dict::new(), procedure: "com.public.other".into() }).await;
    assert!(matches!(callee.recv().await, Message::Error { error, .. } if error == err::LIMIT_EXCEEDED));
    assert!(gw.metric("telegraphy_rpc_calls_total{outcome=\"refused\"}").await >= 1.0);
}

#[tokio::test]
async fn a_role_without_rpc_rights_may_neither_call_nor_register() {
    let mut config = util::config();
    config.roles.insert(
        "anonymous".into(),
        telegraphy_gateway::config::RoleConfig {
            subscribe: vec!["*".into()],
            call: vec!["com.public.*".into()],
            register: vec!["com.public.*".into()],
            ..Default::default()
        },
    );
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join_rpc(&gw, JSON).await;
    let request = c.request_id();
    c.send(&Message::Register { request, options: Dict::new(), procedure: "com.private.x".into() }).await;
    assert!(matches!(c.recv().await, Message::Error { error, .. } if error == err::NOT_AUTHORIZED));
    let request = c.request_id();
    c.send(&Message::Register { request, options: dict! {"match" => "prefix"}, procedure: "com.".into() }).await;
    assert!(matches!(c.recv().await, Message::Error { error, .. } if error == err::NOT_AUTHORIZED), "a prefix wider than the rights");
    let request = c.call("com.private.x", vec![], Dict::new()).await;
    assert_eq!(call_error(&mut c, request).await.0, err::NOT_AUTHORIZED);
    c.register("com.public.x", Dict::new()).await;
    assert_eq!(gw.metric("telegraphy_authorization_denied_total{action=\"register\"}").await, 2.0);
    assert_eq!(gw.metric("telegraphy_authorization_denied_total{action=\"call\"}").await, 1.0);
}

#[tokio::test]
async fn a_role_can_disclose_every_caller() {
    let mut config = util::config();
    config.roles.get_mut("anonymous").unwrap().disclose_caller = true;
    let gw = TestGateway::start_with(config).await;
    let mut callee = Client::join_rpc(&gw, JSON).await;
    let mut caller = Client::join_rpc(&gw, JSON).await;
    callee.register("com.whoami", Dict::new()).await;
    caller.call("com.whoami", vec![], Dict::new()).await; // no disclose_me
    let (_, _, details, _) = invocation(&mut callee).await;
    assert_eq!(details.get("caller"), Some(&Value::UInt(caller.session())));
    assert_eq!(details.get("caller_authid"), Some(&Value::Str(caller.authid())));
}
