//! `check`, `test` and `--help`: what a rule author sees.

use std::fs;

use super::{forewarn, repo, text};

#[test]
fn the_default_rules_check_and_their_tests_pass() {
    let out = forewarn(&["check", "rules"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "rules: 19 rules ok\nrules/templates: templates ok in en, fr, zh\nrules/directory/branches.toml: 32 branches ok\n"
    );
    let out = forewarn(&["test", "rules"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("rules: "), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"));
}

#[test]
fn a_broken_rule_names_file_line_column_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("delay.toml"),
        "[[rule]]\nid = \"stalled\"\naudience = [\"customer\"]\nseverity = \"warning\"\nabsence = { after = \"24h\", whle_in = [\"departed\"] }\n",
    )
    .unwrap();
    let out = forewarn(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("delay.toml:5:28: unknown field `whle_in`"), "{stderr}");
    assert!(stderr.contains("did you mean `while_in`?"), "{stderr}");
}

#[test]
fn a_failing_rule_test_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    for f in fs::read_dir(repo("rules")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|x| x == "toml") {
            fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    fs::create_dir(dir.path().join("tests")).unwrap();
    fs::write(
        dir.path().join("tests/wrong.toml"),
        r#"[[test]]
name = "expects the stall an hour too early"
until = "2026-11-22T00:00:00Z"
events = [{ kind = "departed", at = "2026-11-20T12:00:00Z" }]
expect = [{ rule = "stalled", at = "2026-11-21T11:00:00Z" }]
"#,
    )
    .unwrap();
    let out = forewarn(&["test", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("- stalled firing at=2026-11-21T11:00:00Z parcel=P1"), "{stdout}");
    assert!(stdout.contains("+ stalled firing at=2026-11-21T12:00:00Z parcel=P1"), "{stdout}");
    assert!(stdout.contains("rules: 0 passed, 1 failed"), "{stdout}");
}

#[test]
fn every_command_has_help() {
    for cmd in ["replay", "check", "test", "simulate"] {
        let out = forewarn(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage: forewarn"), "{cmd}");
    }
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["simulate", "--parcels", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    assert!(text(&head).starts_with("{\"v\":1,"));
}

#[test]
fn a_closed_pipe_ends_check_and_test_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    for command in ["check", "test"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args([command, &repo("rules").display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `forewarn test rules | head -1`: the reader goes after one line.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 2];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{command}");
    }
}

#[test]
fn the_deployed_nats_configuration_is_valid_and_syncs_every_write() {
    let conf = repo("deploy/nats/nats-server.conf");
    let out =
        std::process::Command::new("nats-server").arg("-c").arg(&conf).arg("-t").output().expect("nats-server runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let text = std::fs::read_to_string(conf).expect("the config");
    assert!(text.contains("sync_interval: always"));
}

#[test]
fn run_without_templates_stops_at_once_and_says_how_to_go_on() {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(repo("rules/delay.toml"), dir.path().join("delay.toml")).unwrap();
    let rules = dir.path().to_str().unwrap();
    // Nothing listens on port 1: the error must come before any connection.
    let out = forewarn(&["run", "--rules", rules, "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("templates {rules}/templates")), "{stderr}");
    assert!(stderr.contains("--role detect"), "{stderr}");
    assert!(!stderr.contains("connect"), "it failed before connecting:\n{stderr}");
}

/// A channel that cannot work (Twilio without its account SID) once let
/// detection run for minutes with the dispatcher dead, the error printed at
/// exit: it stops the start, before any connection.
#[test]
fn run_with_a_channel_that_cannot_work_stops_at_once() {
    let args = ["run", "--nats", "nats://127.0.0.1:1", "--sms-url", "http://127.0.0.1:9", "--sms-provider", "twilio"];
    let out = forewarn(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("dispatch.sms.account: the Twilio account SID is needed"), "{stderr}");
    assert!(!stderr.contains("connect"), "it failed before connecting:\n{stderr}");
}

/// `deploy/systemd/forewarn.service`: systemd finds nothing to ignore in it,
/// and forewarn accepts its command line (a flag it does not know would stop
/// it with a usage error before it reads any file).
#[test]
fn the_systemd_unit_verifies_and_its_command_line_parses() {
    let unit = fs::read_to_string(repo("deploy/systemd/forewarn.service")).unwrap();
    let binary = env!("CARGO_BIN_EXE_forewarn");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forewarn.service");
    fs::write(&path, unit.replace("/usr/local/bin/forewarn", binary)).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && !said.contains(path.to_str().unwrap()), "systemd-analyze verify:\n{said}");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let out = forewarn(&args);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "usage error:\n{stderr}");
    assert!(stderr.contains("/etc/forewarn/forewarn.toml"), "it went on to read its configuration:\n{stderr}");
}

#[test]
fn simulate_draws_the_shape_asked_for_and_refuses_one_out_of_bounds() {
    let out =
        forewarn(&["simulate", "--shape", "national-eu", "--branches", "600", "--parcels", "2000", "--seed", "4"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = text(&out.stdout);
    let branches: std::collections::BTreeSet<&str> =
        events.lines().filter_map(|l| l.split(r#""branch":""#).nth(1)?.split('"').next()).collect();
    assert!(branches.len() > 200 && branches.len() <= 600, "{} branches", branches.len());
    for country in ["FR-", "DE-", "ES-"] {
        assert!(branches.iter().any(|b| b.starts_with(country)), "no branch in {country}");
    }
    assert!(events.contains("-PP1\""), "pickup points");
    for (args, says) in [
        (&["--branches", "60000"][..], "--branches 60000: from one per country (3) to 50000"),
        (&["--countries", "FR,FR"][..], "--countries: FR named twice"),
        (&["--countries", "FR,XX"][..], "--countries: unknown country \"XX\""),
    ] {
        let out = forewarn(&[&["simulate", "--shape", "national-eu", "--parcels", "10"][..], args].concat());
        assert!(!out.status.success() && text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn render_shows_a_rules_message_with_sample_data_or_a_real_alert() {
    let out = forewarn(&["render", "--rule", "late", "--locale", "fr"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.starts_with("Votre colis 1Z999AA10123456784 est en retard"), "{stdout}");
    let sms = stdout.lines().next().unwrap();
    let expected = format!("-- fr/customer/late.sms: {} characters, gsm7, 2 segment(s)", sms.chars().count());
    assert_eq!(stdout.lines().last().unwrap(), expected);
    let out = forewarn(&["render", "--rule", "late", "--locale", "zh-CN"]);
    assert!(text(&out.stdout).lines().last().unwrap().contains(", ucs2, "), "{}", text(&out.stdout));

    let dir = tempfile::tempdir().unwrap();
    let events = super::simulate(dir.path(), "events.jsonl", 2000, 3);
    let alerts = dir.path().join("alerts.jsonl").to_string_lossy().into_owned();
    let out = forewarn(&["replay", &events, "--out", &alerts]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = fs::read_to_string(&alerts).unwrap();
    let stalled: serde_json::Value = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|a: &serde_json::Value| a["rule"] == "stalled")
        .unwrap();
    let out = forewarn(&["render", "--alert", &alerts, "--rule", "stalled", "--channel", "email", "--locale", "en"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.starts_with("Subject: "), "{stdout}");
    assert!(stdout.contains(stalled["parcel_id"].as_str().unwrap()), "the alert's own parcel: {stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("-- en/customer/stalled.email: "), "{stdout}");

    let out = forewarn(&["render", "--alert", &alerts, "--rule", "no_such_rule"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no alert of rule no_such_rule"), "{}", text(&out.stderr));
}

/// A configuration that parses but cannot work stops the start with the
/// file, the setting and the way out, said once; a pull too large for the
/// client's subscription buffer is one (the client would drop messages).
#[test]
fn a_configuration_that_cannot_work_is_refused_once_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forewarn.toml");
    fs::write(&path, "[consumer]\nbatch = 50000\n").unwrap();
    let out = forewarn(&["run", "--config", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert_eq!(stderr.matches("consumer.batch is 50000: at most 43690").count(), 1, "{stderr}");
}
