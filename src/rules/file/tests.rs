use expect_test::{expect, Expect};

use super::*;

fn load(text: &str) -> Result<RuleSet, Vec<RuleError>> {
    load_sources(&[(PathBuf::from("rules/x.toml"), text.to_string())])
}

/// Loads one file and compares its errors, one a line.
fn check_err(text: &str, expected: Expect) {
    let errors = load(text).expect_err("the pack should be refused");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    expected.assert_eq(&lines.join("\n"));
}

#[test]
fn the_default_pack_loads() {
    let set = RuleSet::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
    let ids: Vec<&str> = set.rules.iter().map(|r| r.voice.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "repeat_contact",
            "customs_hold",
            "customs_action",
            "stalled",
            "late",
            "predicted_late",
            "not_handed_over",
            "revised_estimate",
            "delivery_failed",
            "repeated_failure",
            "pickup_reminder",
            "return_warning",
            "damaged",
            "lost"
        ]
    );
    let spike = &set.branch_rules[0];
    assert_eq!(spike.voice.id, "branch_delay_spike");
    assert_eq!(spike.members, [set.find("stalled").unwrap(), set.find("late").unwrap()]);
    assert_eq!(spike.threshold, Threshold::Count { min: 20, factor: 3.0 });
    let (by_branch, by_facility): (Vec<_>, Vec<_>) = set.branch_rules.iter().partition(|b| b.by == By::Branch);
    assert!(by_branch.iter().all(|b| b.by_hour), "every default branch rule knows its branch's hours");
    // A hub works round the clock: its stall is judged against its usual over all hours.
    let [hub] = by_facility.as_slice() else { panic!("one facility rule") };
    assert_eq!(hub.voice.id, "facility_stall");
    let names = |rules: &[usize]| rules.iter().map(|&i| set.rules[i].voice.id.as_str()).collect::<Vec<_>>();
    assert_eq!(names(&hub.members), ["stalled", "predicted_late"]);
    assert_eq!(names(&hub.inhibits), ["stalled", "predicted_late", "late"]);
    let Trigger::Absence { after, .. } = &set.rules[set.find("stalled").unwrap()].trigger else { panic!() };
    assert_eq!(
        (after.get(Some("express")), after.get(Some("standard")), after.get(None)),
        (Span::hours(12), Span::hours(24), Span::hours(24))
    );
}

#[test]
fn a_misspelt_key_gets_a_suggestion() {
    check_err(
        "[[rule]]\nid = \"s\"\naudience = [\"customer\"]\nseverity = \"info\"\nabsence = { after = \"24h\", whle_in = [\"arrived\"] }\n",
        expect!["rules/x.toml:5:28: unknown field `whle_in`, expected `after` or `while_in`; did you mean `while_in`?"],
    );
    check_err(
        "[[rule]]\nid = \"s\"\naudiance = [\"customer\"]\n",
        expect!["rules/x.toml:3:1: unknown field `audiance`, expected one of `id`, `summary`, `audience`, `severity`, `any_hour`, `resolve`, `once`, `estimate`, `where`, `by_service`, `on`, `absence`, `deadline`, `state_duration`, `nth`, `contacts`, `predicted`, `revised`, `branch`; did you mean `audience`?"],
    );
}

#[test]
fn bad_values_are_pointed_at() {
    check_err(
        "[[rule]]\nid = \"s\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"deliverd\"] }\n",
        expect![[r#"rules/x.toml:5:15: unknown kind "deliverd"; did you mean "delivered"?"#]],
    );
    check_err(
        "[[rule]]\nid = \"s\"\naudience = [\"customers\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\n",
        expect![[r#"rules/x.toml:3:12: unknown audience "customers"; did you mean "customer"?"#]],
    );
    check_err(
        "[[rule]]\nid = \"s\"\naudience = [\"customer\"]\nseverity = \"info\"\nabsence = { after = \"24 hours\", while_in = [] }\n",
        expect![[r#"rules/x.toml:5:21: "24 hours" is not a duration; write it like "24h", "90m" or "2d""#]],
    );
    check_err(
        "[[rule]]\nid = \"Bad-Id\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\n",
        expect![[
            r#"rules/x.toml:2:6: rule id "Bad-Id" must be lower-case letters, digits and _ (it is a metric label and a template name)"#
        ]],
    );
    check_err(
        "[[rule]]\nid = \"c\"\naudience = [\"branch\"]\nseverity = \"info\"\ncontacts = { count = 9, within = \"1h\" }\n",
        expect!["rules/x.toml:5:22: contacts: count must be 1 to 4"],
    );
}

#[test]
fn a_rule_has_exactly_one_trigger() {
    check_err(
        "[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\n\n[[rule]]\nid = \"b\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\nnth = { kind = \"lost\", n = 2 }\n",
        expect![[r#"
            rules/x.toml:1:1: rule `a` has no trigger; give it one of on, absence, deadline, state_duration, nth, contacts, predicted, revised or branch
            rules/x.toml:6:1: rule `b` has 2 triggers (on, nth); a rule has exactly one"#]],
    );
}

#[test]
fn a_revised_rule_tells_its_estimate_and_moves_by_whole_days() {
    let set = load("[[rule]]\nid = \"r\"\naudience = [\"customer\"]\nseverity = \"info\"\nrevised = {}\n").unwrap();
    assert_eq!(set.rules[0].trigger, Trigger::Revised { days: 1 });
    assert!(set.rules[0].estimate, "a revision always tells the new estimate");
    check_err(
        "[[rule]]\nid = \"r\"\naudience = [\"customer\"]\nseverity = \"info\"\nrevised = { days = 0 }\n",
        expect!["rules/x.toml:5:20: revised: days counts from 1 (a move within the day is no news)"],
    );
}

#[test]
fn cross_rule_checks() {
    check_err(
        "[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\n\n[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\n",
        expect!["rules/x.toml:8:6: rule id `a` is already defined at rules/x.toml:2"],
    );
    check_err(
        "[[rule]]\nid = \"stalled\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\n\n[[rule]]\nid = \"spike\"\naudience = [\"branch\"]\nseverity = \"info\"\nbranch = { rules = [\"staled\"], window = \"1h\", min_count = 3 }\n",
        expect!["rules/x.toml:8:6: branch rule `spike` counts unknown rule `staled`; did you mean `stalled`?"],
    );
    check_err(
        "[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\non = { kind = [\"lost\"] }\nby_service = { express = \"1h\" }\n",
        expect!["rules/x.toml:1:1: rule `a`: by_service applies to absence, deadline and state_duration rules only"],
    );
}

#[test]
fn broken_toml_says_where() {
    check_err("[[rule]\nid = 1\n", expect!["rules/x.toml:1:7: invalid table header\nexpected `.`, `]]`"]);
}

#[test]
fn a_reason_filter_needs_an_event() {
    check_err(
        "[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\nwhere = { reason = [\"inspection\"] }\nstate_duration = { state = \"customs_hold\", after = \"1h\" }\n",
        expect!["rules/x.toml:1:1: rule `a`: where.reason filters events; a timer rule has no event to filter (use on or nth)"],
    );
    let set = load("[[rule]]\nid = \"b\"\naudience = [\"customer\"]\nseverity = \"info\"\nwhere = { reason = [\"major\"] }\non = { kind = [\"damaged\"] }\n").unwrap();
    assert_eq!(set.rules[0].filter.reasons, ["major"]);
}

#[test]
fn a_missing_directory_says_so_without_a_position() {
    let errors = load_dir(Path::new("/nonexistent/rules")).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "/nonexistent/rules: cannot read the rules directory: No such file or directory (os error 2); pass --rules DIR"
    );
}

#[test]
fn once_is_for_timer_rules() {
    check_err(
        "[[rule]]\nid = \"a\"\naudience = [\"customer\"]\nseverity = \"info\"\nonce = true\non = { kind = [\"damaged\"] }\n",
        expect!["rules/x.toml:1:1: rule `a`: once applies to timer rules (absence, deadline, state_duration, predicted); an event rule fires once per parcel unless on.each = true"],
    );
    let set = load("[[rule]]\nid = \"b\"\naudience = [\"customer\"]\nseverity = \"info\"\nonce = true\nstate_duration = { state = \"customs_hold\", after = \"1h\" }\n").unwrap();
    assert!(set.rules[0].once);
}
