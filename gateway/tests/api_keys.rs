//! `[[api_keys]]`: a key limited to its topics, its options and its rate,
//! so that a cron job's key cannot publish everywhere. Each refusal is a
//! clear error and a metric (`telegraphy_api_key_refused_total`).

use telegraphy_testkit as util;

use serde_json::{json, Value};
use telegraphy_gateway::config::{ApiKeyConfig, ApiKeySetting};
use telegraphy_wamp::{Dict, Serialization};
use util::{Client, TestGateway};

const CRON: &str = "cron-key-0123456789";
const DJANGO: &str = "django-key-0123456789";

async fn post(gw: &TestGateway, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let request = match body {
        Some(b) => client.post(format!("http://{}{path}", gw.addr)).json(&b),
        None => client.get(format!("http://{}{path}", gw.addr)),
    };
    let resp = request.bearer_auth(key).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn gateway() -> TestGateway {
    let dir = std::env::temp_dir().join(format!("telegraphy-api-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("cron.key");
    std::fs::write(&key_file, format!("{CRON}\n")).unwrap();
    let mut config = util::config();
    config.api_keys = vec![
        ApiKeySetting::Entry(ApiKeyConfig {
            name: "cron".into(),
            key_file: Some(key_file),
            publish: vec!["reports.*".into()],
            publish_rate: 0.01,
            publish_burst: 3,
            ..Default::default()
        }),
        ApiKeySetting::Entry(ApiKeyConfig {
            name: "django".into(),
            key: Some(DJANGO.into()),
            publish: vec!["*".into()],
            publish_options: true,
            presence: true,
            ..Default::default()
        }),
    ];
    TestGateway::start_with(config).await
}

#[tokio::test]
async fn a_key_publishes_only_where_its_entry_says() {
    let gw = gateway().await;
    let mut sub = Client::join(&gw, Serialization::Json).await;
    sub.subscribe("reports", "prefix").await;
    sub.subscribe("orders", "prefix").await;

    let (status, answer) = post(&gw, "/publish", CRON, Some(json!({"topic": "reports.daily", "args": [1]}))).await;
    assert_eq!(status, 200, "{answer}");
    let (_, args, _) = sub.event().await;
    assert_eq!(args, vec![telegraphy_wamp::Value::UInt(1)]);

    let (status, answer) = post(&gw, "/publish", CRON, Some(json!({"topic": "orders.new"}))).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("topic_not_allowed")));
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("`cron`") && message.contains("orders.new") && message.contains("[[api_keys]]"), "{message}");

    // Targeting sessions needs publish_options.
    let (status, answer) = post(&gw, "/publish", CRON, Some(json!({"topic": "reports.daily", "options": {"eligible": [sub.session()]}}))).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("options_not_allowed")));
    // The rate: a burst of three, then 429 (the three answers above took three).
    let (status, answer) = post(&gw, "/publish", CRON, Some(json!({"topic": "reports.daily"}))).await;
    assert_eq!((status, answer["error"].as_str()), (429, Some("rate_limited")), "{answer}");
    // Presence is not its to read.
    let (status, answer) = post(&gw, "/presence?topic=reports.daily", CRON, None).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("presence_not_allowed")));

    // The web-app's key may do all of it.
    let (status, _) = post(&gw, "/publish", DJANGO, Some(json!({"topic": "orders.new", "options": {"exclude": [sub.session()]}}))).await;
    assert_eq!(status, 200);
    let (status, answer) = post(&gw, "/presence?topic=orders", DJANGO, None).await;
    assert_eq!(status, 200, "{answer}");
    // Nothing refused reached the subscriber; the excluded one did not either.
    let mut options = Dict::new();
    options.insert("exclude_me".into(), telegraphy_wamp::Value::Bool(false));
    sub.publish("orders.marker", vec![], options).await;
    let (_, _, details) = sub.event().await;
    assert_eq!(details.get("topic"), Some(&telegraphy_wamp::Value::Str("orders.marker".into())), "nothing refused or excluded came through");

    for (reason, n) in [("topic", 1.0), ("options", 1.0), ("rate", 1.0), ("presence", 1.0)] {
        assert_eq!(gw.metric(&format!("telegraphy_api_key_refused_total{{api_key=\"cron\",reason=\"{reason}\"}}")).await, n, "{reason}");
    }
    // An unknown key learns nothing about the others.
    let (status, answer) = post(&gw, "/publish", "not-a-key-at-all", Some(json!({"topic": "reports.daily"}))).await;
    assert_eq!((status, answer["error"].as_str()), (403, Some("invalid_api_key")));
}
