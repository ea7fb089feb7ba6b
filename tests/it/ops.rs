//! The ops plane against a real Prometheus: it scrapes a running forewarn
//! fed by the simulator over a real nats-server, and its HTTP API shows the
//! event, alert and notification counters moving, the service level and the
//! hold-out measure.

use super::nats::{self, wait_until, NatsServer, Processor};
use super::services::Prometheus;

#[test]
fn prometheus_scrapes_events_alerts_notifications_and_the_service_level() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = super::simulate(dir.path(), "net.jsonl", 3000, 21);
    let clock = dir.path().join("clock");
    let config = nats::config(dir.path(), &clock);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(
        "holdout = 0.2\n\n[dispatch.limits]\ngroup_window = \"0s\"\n\n[dispatch.service_level]\ninterval = \"1s\"\n",
    );
    std::fs::write(&config, text).expect("config written");
    let server = NatsServer::start();
    let port = super::free_port();
    let http = format!("127.0.0.1:{port}");
    let p = Processor::start(dir.path(), &config, &["--nats", &server.url(), "--http", &http]);
    let prometheus = Prometheus::start(&http);
    wait_until("Prometheus scraping forewarn", || prometheus.value("up{job=\"forewarn\"}") == Some(1.0));
    assert_eq!(prometheus.value("sum(forewarn_events_total)"), Some(0.0), "nothing consumed yet, and said so");

    nats::finish(nats::publish(&server.url(), 3000, 21, &[]));
    nats::set_clock(&clock, &nats::newest(&events));
    let published = std::fs::read_to_string(&events).expect("events").lines().count() as f64;
    let value = |q: &str| prometheus.value(q).unwrap_or(0.0);
    wait_until("every event counted", || value("sum(forewarn_events_total)") >= published);
    wait_until("alerts counted", || value("sum(forewarn_alerts_total{state=\"firing\"})") > 10.0);
    wait_until("notifications sent", || value("sum(forewarn_notifications_total{outcome=\"sent\"})") > 10.0);
    wait_until("the service level", || prometheus.value("forewarn_service_level_ratio").is_some());
    wait_until("contacts judged", || value("sum(forewarn_contacts_judged_total{spoke_first=\"true\"})") > 0.0);
    assert!(value("sum(forewarn_contact_lead_seconds_count)") > 0.0, "lead times observed");
    let told = |group: &str| value(&format!("forewarn_parcels_told_total{{group=\"{group}\"}}"));
    wait_until("parcels told in the hold-out group", || told("held_out") > 0.0);
    let share = told("held_out") / (told("held_out") + told("messaged"));
    assert!((0.1..0.3).contains(&share), "a fifth of the parcels told is held out: {share}");
    assert!(value("sum(forewarn_notifications_total{reason=\"holdout\"})") > 0.0, "their messages skipped, holdout");
    assert!(prometheus.value("sum(forewarn_contacts_after_telling_total)").is_some(), "contacts by group exported");
    held_out_customers_got_no_sms(&events, &dir.path().join("outbox/sms.jsonl"));
    assert!(value("sum(forewarn_event_to_accepted_seconds_count)") > 10.0, "end-to-end latencies observed");

    let delivered = value("forewarn_events_total{kind=\"delivered\"}");
    assert!(delivered > 100.0, "events by kind: {delivered}");
    let level = value("forewarn_service_level_ratio");
    assert!((0.0..=1.0).contains(&level), "a ratio: {level}");
    assert!(value("sum(forewarn_first_messages_total)") > 0.0);
    // The window's gauges, refreshed every 5 s.
    wait_until("the window's gauges", || value("forewarn_resident_memory_bytes") > 1e6);
    assert!(prometheus.value("forewarn_parcels_in_flight").is_some());
    let lanes = |level: &str| value(&format!("forewarn_lanes{{level=\"{level}\"}}"));
    wait_until("the lanes learning", || value("forewarn_lane_legs_learnt") > 0.0 && lanes("fine") > 0.0);
    assert!(lanes("all") > lanes("fine"), "classes and network lanes beside the fine ones");
    assert_eq!(value("forewarn_lane_overflow_legs"), 0.0, "a regional network fits the fine lanes");
    assert!(value("forewarn_checkpoint_last_success_timestamp_seconds") > 1.7e9);
    assert!(value("histogram_quantile(0.5, sum by (le) (rate(forewarn_send_duration_seconds_bucket[1m])))") >= 0.0);
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(super::repo("deploy/grafana/forewarn.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for expr in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .map(|t| t["expr"].as_str().expect("an expr"))
    {
        let answer = prometheus.query(&expr.replace("$__rate_interval", "1m"));
        assert_eq!(answer["status"], "success", "the dashboard's {expr}: {answer}");
    }
    wait_until("ready once caught up", || super::http_get(&http, "/readyz").starts_with("HTTP/1.1 200"));
    let metrics = super::http_get(&http, "/metrics");
    for private in ["+33", "@exemple", "FW0"] {
        assert!(!metrics.contains(private), "no contact detail or parcel id in the metrics ({private})");
    }
    let (status, log) = p.stop();
    assert!(status.success(), "{log}");
}

/// No SMS about a parcel in the hold-out group went to its customer (a
/// branch's on-call SMS about it may; the simulator's phones repeat, so a
/// customer is known by phone and tracking number together).
fn held_out_customers_got_no_sms(events: &str, sms: &std::path::Path) {
    let held_out: std::collections::HashMap<String, String> = std::fs::read_to_string(events)
        .expect("events")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| Some((e["parcel_id"].as_str()?.to_string(), e["recipient"]["phone"].as_str()?.to_string())))
        .filter(|(parcel, _)| forewarn::holdout::held_out(parcel, 0.2))
        .collect();
    assert!(held_out.len() > 100, "the hold-out has customers: {}", held_out.len());
    let sent: Vec<serde_json::Value> = std::fs::read_to_string(sms)
        .expect("SMS in the outbox")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an SMS line"))
        .collect();
    assert!(sent.len() > 10, "SMS went: {}", sent.len());
    let about_held_out = |m: &serde_json::Value| {
        let (to, text) = (m["to"].as_str().expect("to"), m["text"].as_str().expect("text"));
        held_out.iter().any(|(parcel, phone)| phone == to && text.contains(parcel.as_str()))
    };
    let wrong: Vec<&serde_json::Value> = sent.iter().filter(|m| about_held_out(m)).collect();
    assert!(wrong.is_empty(), "SMS to held-out customers: {wrong:#?}");
    let messaged = sent.iter().filter(|m| m["text"].as_str().is_some_and(|t| t.contains("FW"))).count();
    assert!(messaged > 10, "customers outside the hold-out were told: {messaged}");
}

#[test]
fn the_deployed_prometheus_configuration_and_alerting_rules_pass_promtool() {
    let dir = super::repo("deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "forewarn-rules.yml"],
        &["test", "rules", "forewarn-rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool").args(args).current_dir(&dir).output().expect("promtool runs");
        assert!(out.status.success(), "promtool {args:?}:\n{}{}", super::text(&out.stdout), super::text(&out.stderr));
    }
}

/// Every `forewarn_…` name in the Prometheus rules and Grafana dashboards of `deploy/`, its histogram
/// suffixes aside, is one the processor exports.
#[test]
fn every_metric_the_deploy_files_use_is_exported() {
    let exported = &forewarn::metrics::METRICS.names;
    let mut used = std::collections::BTreeSet::new();
    let mut stack: Vec<_> =
        ["deploy/prometheus", "deploy/grafana"].map(super::repo).into_iter().filter(|p| p.exists()).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("a dir").map(|e| e.expect("an entry").path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (at, _) in text.match_indices("forewarn_") {
            let name: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            used.insert((name, path.clone()));
        }
    }
    assert!(used.len() > 8, "the deploy files use forewarn metrics: {used:?}");
    // And a process that has just started serves each of them, at 0 if
    // nothing happened yet: a family without a series shows "no data".
    let dir = tempfile::tempdir().expect("a temp dir");
    let server = NatsServer::start();
    let http = format!("127.0.0.1:{}", super::free_port());
    let config = nats::config(dir.path(), &dir.path().join("clock"));
    let p = Processor::start(dir.path(), &config, &["--nats", &server.url(), "--http", &http]);
    wait_until("ready", || super::http_get(&http, "/readyz").starts_with("HTTP/1.1 200"));
    let served = super::http_get(&http, "/metrics");
    p.kill();
    let mut missing = std::collections::BTreeSet::new();
    for (name, path) in used {
        let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            exported.iter().any(|e| e == &name || e == base),
            "{} uses {name}, which forewarn does not export",
            path.display()
        );
        if !served.lines().any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))) {
            missing.insert(name);
        }
    }
    assert!(missing.is_empty(), "a fresh process serves no series of {missing:?}");
}

/// The status line and body of a response.
fn split(response: &str) -> (&str, &str) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    (head.lines().next().unwrap_or(""), body)
}

#[test]
fn the_agent_sees_what_the_customer_was_told_and_the_branch_sees_its_at_risk_parcels() {
    const TOKEN: &str = "agent-s3cret";
    let dir = tempfile::tempdir().expect("a temp dir");
    let events = super::simulate(dir.path(), "net.jsonl", 1500, 33);
    let clock = dir.path().join("clock");
    let config = nats::config(dir.path(), &clock);
    let server = NatsServer::start();
    let port = super::free_port();
    let http = format!("127.0.0.1:{port}");
    let rt = nats::runtime();
    let (_client, mut outcomes) = rt.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let sub = client.subscribe("notify.outcomes.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        (client, sub)
    });
    let p = Processor::start_env(
        dir.path(),
        &config,
        &["--nats", &server.url(), "--http", &http],
        &[("FOREWARN_API_TOKEN", TOKEN)],
    );
    nats::finish(nats::publish(&server.url(), 1500, 33, &[]));
    nats::set_clock(&clock, &nats::newest(&events));
    // The first customer message that went out.
    let sent: serde_json::Value = rt.block_on(async {
        use futures::StreamExt;
        loop {
            let m = tokio::time::timeout(nats::PATIENCE, outcomes.next()).await.expect("an outcome").expect("open");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
            if v["outcome"] == "sent" && v["audience"] == "customer" && v["branch"].is_string() {
                break v;
            }
        }
    });
    let parcel = sent["parcel_id"].as_str().expect("a parcel id");
    let auth = format!("Authorization: Bearer {TOKEN}");
    // Each alert says when its cause reached the server: the end-to-end latency starts there.
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
        let stream = js.get_stream("ALERTS").await.expect("the alerts stream");
        let first = stream.get_raw_message(1).await.expect("an alert");
        let arrived = forewarn::nats::wire::arrived(Some(&first.headers)).expect("a Forewarn-Arrived header");
        let stored = std::time::SystemTime::from(first.time);
        let before = stored.duration_since(arrived).expect("the cause arrived before the alert was stored");
        assert!(before < std::time::Duration::from_secs(60), "{before:?}");
    });

    let anonymous = super::http_get(&http, &format!("/v1/parcels/{parcel}"));
    assert!(split(&anonymous).0.contains(" 401 ") && anonymous.contains("Bearer"), "no token, no answer: {anonymous}");
    let wrong = super::http_get_with(&http, &format!("/v1/parcels/{parcel}"), &["Authorization: Bearer agent-s3creT"]);
    assert!(split(&wrong).0.contains(" 401 "), "{wrong}");

    let response = super::http_get_with(&http, &format!("/v1/parcels/{parcel}"), &[&auth]);
    let (status, body) = split(&response);
    assert!(status.contains(" 200 "), "{response}");
    let view: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(view["parcel_id"], parcel);
    assert!(["in_flight", "closed"].contains(&view["window"]["status"].as_str().unwrap_or("")), "{view}");
    if view["window"]["status"] == "in_flight" {
        assert!(view["window"]["state"].is_string() && view["window"]["last_scan"]["at"].is_string(), "{view}");
    }
    let told = view["messages"].as_array().expect("messages");
    assert!(
        told.iter().any(|m| m["alert_id"] == sent["alert_id"]
            && m["outcome"] == "sent"
            && m["channel"] == sent["channel"]
            && m["at"].is_string()),
        "the message the customer got is in the agent's view: {sent} in {view}"
    );
    assert!(
        told.iter().filter_map(|m| m["to"].as_str()).all(|to| to.contains("***")),
        "contact details masked: {body}"
    );

    let unknown = super::http_get_with(&http, "/v1/parcels/NO-SUCH-PARCEL", &[&auth]);
    assert!(split(&unknown).0.contains(" 404 "), "{unknown}");
    // 40 characters of three bytes each: a valid tracking number (the API once counted bytes).
    let wide = forewarn::dispatch::deliver::url_encode(&"包".repeat(40));
    let unknown_wide = super::http_get_with(&http, &format!("/v1/parcels/{wide}"), &[&auth]);
    assert!(split(&unknown_wide).0.contains(" 404 "), "{unknown_wide}");

    // The lists change while alerts flow: read them once the dispatcher has
    // been delivered every alert the network makes (some it holds for the
    // morning, unacknowledged).
    let data = std::fs::read_to_string(&events).expect("events");
    let replayed = nats::replayed(&events, dir.path());
    let expected = replayed.len() as u64;
    let js =
        rt.block_on(async { async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect")) });
    wait_until("every alert stored and delivered to the dispatcher", || {
        rt.block_on(async {
            let mut alerts = js.get_stream("ALERTS").await.expect("the alerts stream");
            let last = alerts.info().await.expect("info").state.last_sequence;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                alerts.get_consumer("forewarn-dispatch").await.expect("the dispatcher's consumer");
            let info = consumer.info().await.expect("consumer info");
            last >= expected && info.num_pending == 0
        })
    });
    // Independently of the dispatcher: a branch's at-risk rows are its
    // parcels' alerts that fired and did not resolve, of parcels not
    // delivered, collected or returned since.
    let ended: std::collections::BTreeSet<String> = data
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| ["delivered", "collected", "returned"].contains(&e["kind"].as_str().unwrap_or("")))
        .filter_map(|e| e["parcel_id"].as_str().map(str::to_string))
        .collect();
    let mut open: std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, &str>> = Default::default();
    for a in &replayed {
        let (Some(branch), Some(parcel), Some(id)) =
            (a["branch"].as_str(), a["parcel_id"].as_str(), a["alert_id"].as_str())
        else {
            continue;
        };
        if a["state"] == "firing" {
            open.entry(branch).or_default().insert(id, parcel);
        } else if let Some(rows) = open.get_mut(branch) {
            rows.remove(id);
        }
    }
    let open: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = open
        .into_iter()
        .map(|(b, rows)| (b, rows.into_iter().filter(|(_, p)| !ended.contains(*p)).collect()))
        .collect();
    let (branch, rows) = open.iter().max_by_key(|(_, rows)| rows.len()).expect("a branch");
    let branch = branch.to_string();
    assert!(rows.len() >= 2, "a branch with parcels at risk at the end: {open:?}");
    // A parcel the window let go (lost, after its retention) ends its rows too.
    let listed = |b: &str| {
        let response = super::http_get_with(&http, &format!("/v1/branches/{b}/at-risk?limit=1000"), &[&auth]);
        let page: serde_json::Value = serde_json::from_str(split(&response).1).unwrap_or_default();
        let items = page["items"].as_array().cloned().unwrap_or_default();
        items.iter().filter_map(|i| i["alert_id"].as_str().map(str::to_string)).collect::<Vec<_>>()
    };
    let in_window = |parcel: &str| {
        !super::http_get_with(&http, &format!("/v1/parcels/{parcel}"), &[&auth]).contains("\"status\":\"closed\"")
    };
    let mut want: Vec<String> = rows.iter().filter(|(_, p)| in_window(p)).map(|(id, _)| id.to_string()).collect();
    want.sort();
    wait_until("the branch's at-risk list as the replay makes it", || {
        let mut got = listed(&branch);
        got.sort();
        got == want
    });
    // Page by page, it adds up to its total; as CSV too.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = format!("/v1/branches/{branch}/at-risk?limit=1");
    let mut total = None;
    loop {
        let response = super::http_get_with(&http, &path, &[&auth]);
        let (status, body) = split(&response);
        assert!(status.contains(" 200 "), "{response}");
        let page: serde_json::Value = serde_json::from_str(body).expect("JSON");
        total = total.or(page["total"].as_u64());
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 1);
        for item in items {
            assert!(item["parcel_id"].is_string() && item["rule"].is_string() && item["since"].is_string(), "{item}");
            assert!(seen.insert(item["alert_id"].as_str().expect("an alert id").to_string()), "no row twice: {item}");
        }
        match page["next"].as_str() {
            Some(next) => {
                assert!(response.contains("rel=\"next\""), "a Link header: {response}");
                path = format!("/v1/branches/{branch}/at-risk?limit=1&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(Some(seen.len() as u64), total);
    let csv =
        super::http_get_with(&http, &format!("/v1/branches/{branch}/at-risk?limit=1000"), &[&auth, "Accept: text/csv"]);
    let (status, body) = split(&csv);
    assert!(status.contains(" 200 ") && csv.contains("text/csv"), "{csv}");
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("tracking_number,rule,since,last_scan,facility"));
    assert_eq!(lines.count() as u64, total.unwrap_or(0));
    let bad = super::http_get_with(&http, &format!("/v1/branches/{branch}/at-risk?after=zzz"), &[&auth]);
    assert!(split(&bad).0.contains(" 400 ") && bad.contains("cursor"), "{bad}");

    the_agent_s_page_says_the_same_in_a_browser(&AgentPage {
        http: &http,
        token: TOKEN,
        parcel,
        sent: &sent,
        branch: &branch,
        at_risk: total.unwrap_or(0),
        replayed: &replayed,
        events: &data,
        dir: dir.path(),
    });

    let (status, log) = p.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged");
}

/// What the agent's page is checked against: the API's answers.
struct AgentPage<'a> {
    http: &'a str,
    token: &'a str,
    parcel: &'a str,
    /// A customer message about `parcel` that went out.
    sent: &'a serde_json::Value,
    branch: &'a str,
    at_risk: u64,
    /// The alerts `forewarn replay` makes of the events.
    replayed: &'a [serde_json::Value],
    /// The events published, as JSON lines.
    events: &'a str,
    dir: &'a std::path::Path,
}

/// Debian's Chromium, headless, with nothing reaching out of the machine;
/// `args` end with the URL.
fn chromium(profile: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    assert!(out.status.success(), "chromium {args:?}: {}", super::text(&out.stderr));
    super::text(&out.stdout)
}

/// The agent's page (`/agent`), rendered by a real browser: the parcel's
/// page shows the message the customer got, its contacts masked, times in
/// the customer's zone; the branch's page its at-risk parcels as the API
/// counts them; the search box leads to both; no token, no page.
fn the_agent_s_page_says_the_same_in_a_browser(a: &AgentPage) {
    let (profile, url) = (a.dir.join("chromium"), format!("http://agent:{}@{}", a.token, a.http));
    let page = chromium(&profile, &["--dump-dom", &format!("{url}/agent/parcels/{}", a.parcel)]);
    assert!(page.contains(&format!("Parcel {}", a.parcel)), "{page}");
    let rule = a.sent["rule"].as_str().expect("a rule");
    let row = format!("{} · firing", rule);
    assert!(page.contains(&row) && page.contains(">sent<"), "the message sent, {row}, is listed: {page}");
    let label = a
        .events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["parcel_id"] == a.parcel && e["recipient"].is_object())
        .expect("the parcel's label");
    let recipient = &label["recipient"];
    for contact in [&recipient["phone"], &recipient["email"]].into_iter().filter_map(|c| c.as_str()) {
        assert!(!page.contains(contact), "{contact} is masked: {page}");
    }
    if let Some(tz) = recipient["tz"].as_str() {
        // In the window, the page speaks the customer's zone. Here the
        // watermark follows the clock, so a lost parcel may leave the window
        // before its page is read: closed, the window no longer knows the
        // customer, and the page says it is closed.
        let closed = page.contains(">delivered or closed<");
        assert!(page.contains(tz) || closed, "times in the customer's zone, {tz}: {page}");
    }
    // A parcel in flight with alerts open: the page lists each the API does.
    let auth = format!("Authorization: Bearer {}", a.token);
    let parcels: std::collections::BTreeSet<&str> = a.replayed.iter().filter_map(|x| x["parcel_id"].as_str()).collect();
    let (at_risk, open) = parcels
        .into_iter()
        .find_map(|id| {
            let response = super::http_get_with(a.http, &format!("/v1/parcels/{id}"), &[&auth]);
            let view: serde_json::Value = serde_json::from_str(split(&response).1).ok()?;
            let open = view["window"]["open_alerts"].as_array().filter(|o| !o.is_empty())?.clone();
            Some((id, open))
        })
        .expect("a parcel in flight with an open alert");
    let page = chromium(&profile, &["--dump-dom", &format!("{url}/agent/parcels/{at_risk}")]);
    assert!(page.contains("in flight") && !page.contains("None"), "{page}");
    for alert in open {
        let row = format!("<td>{}</td><td><span class=\"badge", alert["rule"].as_str().expect("a rule"));
        assert!(page.contains(&row), "{row} among the open alerts: {page}");
    }
    let shot = a.dir.join("agent.png");
    let screenshot = format!("--screenshot={}", shot.display());
    chromium(&profile, &["--window-size=1280,1200", &screenshot, &format!("{url}/agent/parcels/{at_risk}")]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real picture: {} bytes", png.len());
    if let Ok(keep) = std::env::var("FOREWARN_AGENT_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("the screenshot kept");
    }

    let branch = chromium(&profile, &["--dump-dom", &format!("{url}/agent/branches/{}", a.branch)]);
    assert!(branch.contains(&format!("Parcels at risk: {}", a.at_risk)), "as the API counts them: {branch}");
    assert_eq!(branch.matches("href=\"/agent/parcels/").count() as u64, a.at_risk.min(500), "{branch}");
    // The search box: a branch code to its page, anything else to a parcel's.
    let found = super::http_get_with(a.http, &format!("/agent?q={}", a.branch), &[&auth]);
    assert!(found.contains(&format!("location: /agent/branches/{}", a.branch)), "{found}");
    let found = super::http_get_with(a.http, &format!("/agent?q=+{}+", a.parcel), &[&auth]);
    assert!(found.contains(&format!("location: /agent/parcels/{}", a.parcel)), "{found}");
    // No token, no page: the browser asks for it.
    let anonymous = super::http_get(a.http, &format!("/agent/parcels/{}", a.parcel));
    assert!(split(&anonymous).0.contains(" 401 ") && anonymous.contains("www-authenticate: Basic"), "{anonymous}");
    assert!(!anonymous.contains(rule), "{anonymous}");
    // What is typed is shown escaped.
    let typed = super::http_get_with(a.http, "/agent/parcels/%3Cscript%3E", &[&auth]);
    assert!(split(&typed).0.contains(" 404 ") && typed.contains("&lt;script&gt;"), "{typed}");
    assert!(!typed.contains("<script>"), "{typed}");
}

/// Most alerts never resolve (a failed attempt, a customs notice, a
/// damage): a branch's at-risk list and daily digest list a parcel only
/// while it is on its way, as the processor's window says. Two parcels
/// fail an attempt; one is delivered later that day: the API lists the
/// other only, the next morning's digest (real processor and dispatcher,
/// the mail in the outbox) too, and the delivered one's row is removed.
#[test]
fn a_parcel_delivered_after_its_alert_leaves_the_branch_s_at_risk_list_and_digest() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let clock = dir.path().join("clock");
    nats::set_clock(&clock, "2026-11-19T08:00:00Z");
    let config = nats::config(dir.path(), &clock);
    let server = NatsServer::start();
    let http = format!("127.0.0.1:{}", super::free_port());
    let p = Processor::start(dir.path(), &config, &["--nats", &server.url(), "--http", &http]);
    let scan = |id: &str, n: u32, kind: &str, at: &str| {
        let label = if kind == "label_created" {
            r#","promised_by":"2026-11-21T18:00:00Z","recipient":{"phone":"+33612345678","channels":[]}"#
        } else {
            ""
        };
        let body = format!(
            r#"{{"v":1,"event_id":"{id}-{n}","parcel_id":"{id}","kind":"{kind}","at":"{at}","branch":"FR-PAR-12","facility":"FR-PAR-12"{label}}}"#
        );
        (format!("scans.{}", forewarn::partition::of(id, 16)), body)
    };
    let mut events = Vec::new();
    for id in ["RISK-DELIVERED", "RISK-OPEN"] {
        events.push(scan(id, 1, "label_created", "2026-11-18T08:00:00Z"));
        events.push(scan(id, 2, "picked_up", "2026-11-18T10:00:00Z"));
        events.push(scan(id, 3, "out_for_delivery", "2026-11-19T07:00:00Z"));
        events.push(scan(id, 4, "delivery_failed", "2026-11-19T09:00:00Z"));
    }
    events.push(scan("RISK-DELIVERED", 5, "delivered", "2026-11-19T15:00:00Z"));
    let rt = nats::runtime();
    let js = rt.block_on(nats::jetstream(&server.url()));
    // 09:00 in Paris: the day's digest (07:00) is due at once. It goes out
    // empty before the alerts come, or it would list them and end the
    // delivered parcel's row before the evening's look.
    let empty = |l: &str| l.contains("no daily digest") && l.contains("branch=FR-PAR-12");
    wait_until("FR-PAR-12's empty morning digest", || p.log().lines().any(empty));
    rt.block_on(async {
        for (subject, body) in events {
            js.publish(subject, body.into()).await.expect("sent").await.expect("stored");
        }
    });
    // The evening: both alerts made, one parcel delivered since.
    nats::set_clock(&clock, "2026-11-19T23:00:00Z");
    let rows = || {
        rt.block_on(async {
            use futures::StreamExt;
            let Ok(bucket) = js.get_key_value("forewarn_at_risk").await else { return Vec::new() };
            let Ok(keys) = bucket.keys().await else { return Vec::new() };
            let mut parcels = Vec::new();
            for key in keys.filter_map(|k| async { k.ok() }).collect::<Vec<String>>().await {
                if let Ok(Some(row)) = bucket.get(&key).await {
                    let row: serde_json::Value = serde_json::from_slice(&row).expect("a row");
                    parcels.push(row["parcel_id"].as_str().unwrap_or("").to_string());
                }
            }
            parcels.sort();
            parcels
        })
    };
    wait_until("both parcels' rows", || rows() == ["RISK-DELIVERED", "RISK-OPEN"]);
    let listed = super::http_get(&http, "/v1/branches/FR-PAR-12/at-risk");
    let listed: serde_json::Value = serde_json::from_str(split(&listed).1).expect("JSON");
    let parcels: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|i| i["parcel_id"].as_str()).collect();
    assert_eq!(parcels, ["RISK-OPEN"], "the delivered parcel is not at risk: {listed}");
    assert_eq!(listed["total"], 1, "{listed}");
    // 08:00 in Paris the next morning: the digest lists the open parcel only.
    nats::set_clock(&clock, "2026-11-20T07:00:00Z");
    let outbox = dir.path().join("outbox/email");
    let digest = || {
        std::fs::read_dir(&outbox).into_iter().flatten().flatten().find_map(|e| {
            let mail = std::fs::read_to_string(e.path()).ok()?;
            mail.contains("at-risk-FR-PAR-12-2026-11-20.csv").then_some(mail)
        })
    };
    wait_until("FR-PAR-12's digest", || digest().is_some());
    let mail = digest().expect("the digest");
    let parsed = mail_parser::MessageParser::default().parse(mail.as_bytes()).expect("a mail");
    let csv = String::from_utf8_lossy(parsed.attachment(0).expect("the CSV").contents()).replace("\r\n", "\n");
    assert!(csv.contains("RISK-OPEN,delivery_failed") && !csv.contains("RISK-DELIVERED"), "{csv}");
    assert_eq!(rows(), ["RISK-OPEN"], "the delivered parcel's row ends with the digest");
    assert!(super::http_get(&http, "/metrics").contains("forewarn_at_risk_rows_ended_total 1"));
    let (status, log) = p.stop();
    assert!(status.success(), "{log}");
}
