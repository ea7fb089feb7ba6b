//! The first stage: who hears of an alert, on which channel. Customers on
//! the channels they chose (an empty list or no way to reach them is an
//! outcome, not an error), branches on what the directory lists, the CRM for
//! claims, ops on the configured receivers. Pure: no IO, no clock.

use std::sync::Arc;

use chrono_tz::Tz;

use super::branches::Directory;
use super::notice::{Notice, Recipient};
use crate::config::dispatch::CustomerChannels;
use crate::rules::{Audience, Severity};

/// Where one message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    CustomerSms {
        phone: String,
    },
    CustomerEmail {
        email: String,
    },
    BranchEmail {
        email: String,
    },
    BranchSms {
        phone: String,
    },
    BranchWebhook {
        url: String,
    },
    /// `branch.warnings.<branch>` on NATS.
    BranchNats,
    /// A claim in the CRM.
    Claim,
    OpsEmail {
        email: String,
    },
    OpsWebhook {
        url: String,
    },
}

impl Target {
    /// Every value of [`Target::channel`].
    pub const CHANNELS: [&'static str; 5] = ["sms", "email", "webhook", "nats", "crm"];

    /// The channel label of metrics and `notify.outcomes.<channel>`.
    pub fn channel(&self) -> &'static str {
        match self {
            Target::CustomerSms { .. } | Target::BranchSms { .. } => "sms",
            Target::CustomerEmail { .. } | Target::BranchEmail { .. } | Target::OpsEmail { .. } => "email",
            Target::BranchWebhook { .. } | Target::OpsWebhook { .. } => "webhook",
            Target::BranchNats => "nats",
            Target::Claim => "crm",
        }
    }

    /// The audience label.
    pub fn audience(&self) -> &'static str {
        match self {
            Target::CustomerSms { .. } | Target::CustomerEmail { .. } => "customer",
            Target::BranchEmail { .. }
            | Target::BranchSms { .. }
            | Target::BranchWebhook { .. }
            | Target::BranchNats => "branch",
            Target::Claim => "crm",
            Target::OpsEmail { .. } | Target::OpsWebhook { .. } => "ops",
        }
    }

    /// Its part of the idempotency key: one per audience and channel, then
    /// `qualifier` (which of several receivers of one audience).
    fn slug(&self, qualifier: &str) -> String {
        format!("{}.{}{qualifier}", self.audience(), self.channel())
    }

    /// A person, not a machine: quiet hours and grouping apply.
    fn human(&self) -> bool {
        matches!(
            self,
            Target::CustomerSms { .. }
                | Target::CustomerEmail { .. }
                | Target::BranchEmail { .. }
                | Target::BranchSms { .. }
        )
    }

    /// The phone or address the rate limit counts, if any.
    pub fn contact(&self) -> Option<&str> {
        match self {
            Target::CustomerSms { phone } | Target::BranchSms { phone } => Some(phone),
            Target::CustomerEmail { email } | Target::BranchEmail { email } | Target::OpsEmail { email } => Some(email),
            _ => None,
        }
    }
}

/// One message to send for one alert.
#[derive(Clone, Debug)]
pub struct Draft {
    /// `<alert id>.<state>.<audience>.<channel>`: sent once, ever.
    pub key: String,
    pub notice: Arc<Notice>,
    pub target: Target,
    /// A resolution: sent only if the firing (this key) was sent.
    pub told: Option<String>,
    /// Waits out the recipient's quiet hours.
    pub quiet: bool,
    /// Alerts of one parcel to one recipient within the group window become one message.
    pub group: Option<String>,
    pub tz: Tz,
    pub locale: Option<String>,
    /// The alert's stream sequence, set by whoever acknowledges it.
    pub seq: u64,
    /// The customer's next channel, should this one fail for good
    /// (`dispatch.customer_channels = "first"`); it has none of its own.
    pub fallback: Option<Box<Draft>>,
    /// The customer's channel this message goes instead of: it failed, or
    /// the customer cannot be reached on it.
    pub instead_of: Option<&'static str>,
}

impl Draft {
    /// Where the ledger keeps this message's outcome.
    pub fn slot(&self) -> String {
        super::ledger::slot(self.notice.parcel_id.as_deref(), &self.key)
    }
}

/// A message not sent, and why: an outcome, counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub audience: &'static str,
    pub channel: &'static str,
    pub reason: &'static str,
}

/// What routing needs besides the alert.
pub struct Routing<'a> {
    pub directory: &'a Directory,
    pub claim_rules: &'a [String],
    pub ops_emails: &'a [String],
    pub ops_webhook: &'a str,
    pub default_tz: Tz,
    /// Customer rules that resolve: their resolution is a follow-up.
    pub follow_up_rules: &'a [&'a str],
    /// The hold-out group's share ([`crate::holdout`]).
    pub holdout: f64,
    pub customer_channels: CustomerChannels,
}

/// The zone named `name`, or `default` when there is none or it is not an IANA zone.
pub fn zone(name: Option<&str>, default: Tz) -> Tz {
    name.and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// The message to `target` about `notice` (`n`, or a copy of it naming one
/// of its branches), in `tz` and `locale`; `qualifier` tells apart several
/// receivers of one audience and channel.
fn draft(
    n: &Notice,
    notice: &Arc<Notice>,
    target: Target,
    tz: Tz,
    locale: Option<String>,
    any_hour: bool,
    qualifier: &str,
) -> Draft {
    let slug = target.slug(qualifier);
    // A follow-up, or a revised estimate, goes only where its firing, or
    // the estimate it revises, went.
    let told = match (&n.revises, n.resolved) {
        (_, true) => Some(format!("{}.firing.{slug}", n.alert_id)),
        (Some(revised), false) => Some(format!("{revised}.firing.{slug}")),
        (None, false) => None,
    };
    let human = target.human();
    let group = (human && n.severity != Severity::Urgent)
        .then(|| n.parcel_id.as_ref().map(|p| format!("{p}\u{0}{slug}")))
        .flatten();
    Draft {
        key: format!("{}.{}.{slug}", n.alert_id, n.state()),
        notice: notice.clone(),
        quiet: human && !any_hour,
        group,
        target,
        told,
        tz,
        locale,
        seq: 0,
        fallback: None,
        instead_of: None,
    }
}

/// The customer's channels in the order they ranked them (SMS, then email,
/// when they chose none); channels forewarn does not send are left out.
fn ranked(rc: &Recipient) -> Vec<&'static str> {
    const SENT: [&str; 2] = ["sms", "email"];
    match &rc.channels {
        None => SENT.to_vec(),
        Some(list) => {
            let mut out: Vec<&'static str> = Vec::new();
            for c in list.iter().filter_map(|c| SENT.iter().find(|s| **s == c.as_str())) {
                if !out.contains(c) {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// The customer's messages about `notice`: on every channel they chose, or
/// (`CustomerChannels::First`) on the first they can be reached on, the
/// next one kept as its fallback.
fn customer(notice: &Arc<Notice>, rc: &Recipient, r: &Routing, drafts: &mut Vec<Draft>, skips: &mut Vec<Skip>) {
    let n = notice.as_ref();
    if rc.channels.as_ref().is_some_and(|l| l.is_empty()) {
        skips.push(Skip { audience: "customer", channel: "any", reason: "opted_out" });
    }
    let first = r.customer_channels == CustomerChannels::First;
    let any_hour = n.any_hour.includes(Audience::CUSTOMER);
    let tz = zone(rc.tz.as_deref(), r.default_tz);
    let mut reachable: Vec<Draft> = Vec::new();
    let mut unreachable = None;
    for channel in ranked(rc) {
        let target = match channel {
            "sms" => rc.phone.clone().map(|phone| Target::CustomerSms { phone }),
            _ => rc.email.clone().map(|email| Target::CustomerEmail { email }),
        };
        match target {
            Some(target) => reachable.push(draft(n, notice, target, tz, rc.locale.clone(), any_hour, "")),
            // With one channel wanted, those after the first reachable do not matter.
            None if rc.channels.is_some() && (!first || reachable.is_empty()) => {
                unreachable.get_or_insert(channel);
                skips.push(Skip { audience: "customer", channel, reason: "no_contact" })
            }
            None => {}
        }
    }
    if !first {
        drafts.extend(reachable);
        return;
    }
    let mut reachable = reachable.into_iter();
    let Some(mut chosen) = reachable.next() else { return };
    chosen.instead_of = unreachable;
    chosen.fallback = reachable.next().map(|mut next| {
        next.instead_of = Some(chosen.target.channel());
        Box::new(next)
    });
    drafts.push(chosen);
}

/// Every message an alert asks for, and every one it cannot have.
pub fn route(notice: &Arc<Notice>, r: &Routing) -> (Vec<Draft>, Vec<Skip>) {
    let mut drafts = Vec::new();
    let mut skips = Vec::new();
    let n = notice.as_ref();
    if n.audience.includes(Audience::CUSTOMER) && (!n.resolved || r.follow_up_rules.contains(&n.rule.as_str())) {
        let held_out = n.parcel_id.as_deref().is_some_and(|p| crate::holdout::held_out(p, r.holdout));
        match &n.recipient {
            _ if held_out => skips.push(Skip { audience: "customer", channel: "any", reason: "holdout" }),
            None => skips.push(Skip { audience: "customer", channel: "any", reason: "no_recipient" }),
            Some(rc) => customer(notice, rc, r, &mut drafts, &mut skips),
        }
    }
    let mut add = |notice: &Arc<Notice>, target: Target, tz: Tz, locale: Option<String>, any_hour: bool, q: &str| {
        drafts.push(draft(n, notice, target, tz, locale, any_hour, q))
    };
    if n.audience.includes(Audience::BRANCH) && !n.resolved {
        let any_hour = n.any_hour.includes(Audience::BRANCH);
        // A facility's alert goes to each branch whose parcels it counted, under its own key.
        let each: Vec<(Arc<Notice>, String)> = match (&n.branch, n.branches.as_slice()) {
            (None, [_, ..]) => n
                .branches
                .iter()
                .map(|b| (Arc::new(Notice { branch: Some(b.clone()), ..n.clone() }), format!(".{b}")))
                .collect(),
            _ => vec![(notice.clone(), String::new())],
        };
        for (notice, qualifier) in each {
            match notice.branch.as_deref().and_then(|b| r.directory.get(b)) {
                None => skips.push(Skip { audience: "branch", channel: "any", reason: "unknown_branch" }),
                Some(b) => {
                    let tz = zone(Some(&b.tz), r.default_tz);
                    let mut add = |target| add(&notice, target, tz, Some(b.locale.clone()), any_hour, &qualifier);
                    if let Some(email) = &b.email {
                        add(Target::BranchEmail { email: email.clone() });
                    }
                    if let (Some(phone), Severity::Urgent) = (&b.on_call, n.severity) {
                        add(Target::BranchSms { phone: phone.clone() });
                    }
                    if let Some(url) = &b.webhook {
                        add(Target::BranchWebhook { url: url.clone() });
                    }
                    add(Target::BranchNats);
                }
            }
        }
    }
    if !n.resolved && n.parcel_id.is_some() && r.claim_rules.contains(&n.rule) {
        add(notice, Target::Claim, r.default_tz, None, true, "");
    }
    if n.audience.includes(Audience::OPS) {
        for (i, email) in r.ops_emails.iter().enumerate() {
            add(notice, Target::OpsEmail { email: email.clone() }, r.default_tz, None, true, &format!(".{i}"));
        }
        if !r.ops_webhook.is_empty() {
            add(notice, Target::OpsWebhook { url: r.ops_webhook.to_string() }, r.default_tz, None, true, ".0");
        }
    }
    (drafts, skips)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dispatch::notice::Recipient;

    /// An alert about parcel P1 to Léa (phone, email, French, Paris) on `channels`.
    pub(crate) fn notice(rule: &str, audience: &str, channels: Option<Vec<&str>>) -> Arc<Notice> {
        let line = serde_json::json!({
            "alert_id": "0123456789abcdef0123456789abcdef", "rule": rule, "state": "firing",
            "at": "2026-11-20T01:00:00Z", "severity": if rule == "damaged" { "urgent" } else { "warning" },
            "audience": audience.split(',').collect::<Vec<_>>(), "any_hour": if rule == "damaged" { vec!["branch"] } else { vec![] },
            "parcel_id": "P1", "branch": "FR-PAR-12",
        });
        let mut n = Notice::decode(line.to_string().as_bytes()).unwrap();
        n.recipient = Some(Recipient {
            name: Some("Léa".into()),
            phone: Some("+33612345678".into()),
            email: Some("lea@example.fr".into()),
            locale: Some("fr-FR".into()),
            tz: Some("Europe/Paris".into()),
            channels: channels.map(|c| c.into_iter().map(String::from).collect()),
        });
        Arc::new(n)
    }

    fn check(n: &Arc<Notice>) -> (Vec<String>, Vec<&'static str>) {
        check_with(n, 0.0)
    }

    /// `n` routed with the default pack's branches, `damaged` claims and
    /// `late` follow-ups.
    pub(crate) fn routed(
        n: &Arc<Notice>,
        holdout: f64,
        customer_channels: CustomerChannels,
    ) -> (Vec<Draft>, Vec<Skip>) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/directory/branches.toml");
        let directory = Directory::load(&path).unwrap();
        let claims = vec!["damaged".to_string()];
        let r = Routing {
            directory: &directory,
            claim_rules: &claims,
            ops_emails: &[],
            ops_webhook: "",
            default_tz: Tz::UTC,
            follow_up_rules: &["late"],
            holdout,
            customer_channels,
        };
        route(n, &r)
    }

    fn check_with(n: &Arc<Notice>, holdout: f64) -> (Vec<String>, Vec<&'static str>) {
        let (drafts, skips) = routed(n, holdout, CustomerChannels::All);
        (
            drafts.iter().map(|d| format!("{} quiet={}", d.key.split_once('.').unwrap().1, d.quiet)).collect(),
            skips.iter().map(|s| s.reason).collect(),
        )
    }

    #[test]
    fn customers_get_the_channels_they_chose() {
        assert_eq!(check(&notice("late", "customer", Some(vec!["sms"]))).0, ["firing.customer.sms quiet=true"]);
        assert_eq!(check(&notice("late", "customer", None)).0.len(), 2);
    }

    #[test]
    fn a_held_out_parcel_s_customer_hears_nothing_and_its_branch_everything() {
        let about = |held: bool| {
            let id = (1..).map(|i| format!("P{i}")).find(|p| crate::holdout::held_out(p, 0.05) == held).unwrap();
            let n = notice("damaged", "customer,branch", Some(vec!["sms", "email"]));
            Arc::new(Notice { parcel_id: Some(id), ..(*n).clone() })
        };
        let (drafts, skips) = check_with(&about(true), 0.05);
        assert_eq!(skips, ["holdout"]);
        assert!(drafts.iter().all(|d| !d.contains("customer")), "{drafts:?}");
        assert_eq!(drafts.len(), check(&about(true)).0.len() - 2, "the branch, the CRM: as without a hold-out");
        // Outside the group, the customer hears as usual.
        let (drafts, skips) = check_with(&about(false), 0.05);
        assert!(skips.is_empty() && drafts.iter().filter(|d| d.contains("customer")).count() == 2, "{drafts:?}");
    }

    #[test]
    fn an_empty_choice_sends_nothing_and_says_so() {
        assert_eq!(check(&notice("late", "customer", Some(vec![]))), (vec![], vec!["opted_out"]));
    }

    #[test]
    fn urgent_branch_warnings_go_at_any_hour_and_open_a_claim() {
        let (drafts, _) = check(&notice("damaged", "customer,branch", Some(vec!["email"])));
        assert_eq!(
            drafts,
            [
                "firing.customer.email quiet=true",
                "firing.branch.email quiet=false",
                "firing.branch.sms quiet=false",
                "firing.branch.nats quiet=false",
                "firing.crm.crm quiet=false",
            ]
        );
    }

    /// A customer's message: its channel, the channel it goes instead of, its fallback's channel.
    type Sent = (&'static str, Option<&'static str>, Option<&'static str>);

    /// With one channel wanted: the customer's messages and the skips.
    fn first(n: &Arc<Notice>) -> (Vec<Sent>, Vec<&'static str>) {
        let (drafts, skips) = routed(n, 0.0, CustomerChannels::First);
        let customer = drafts.iter().filter(|d| d.target.audience() == "customer");
        let fallback =
            |d: &Draft| d.fallback.as_ref().map(|f| (f.target.channel(), f.instead_of, f.fallback.is_none()));
        let seen = customer
            .map(|d| {
                let f = fallback(d);
                assert!(f.is_none_or(|(_, of, last)| of == Some(d.target.channel()) && last), "{f:?}");
                (d.target.channel(), d.instead_of, f.map(|(c, _, _)| c))
            })
            .collect();
        (seen, skips.iter().map(|s| s.reason).collect())
    }

    #[test]
    fn with_one_channel_wanted_the_customer_s_first_goes_and_the_next_waits_as_its_fallback() {
        let late = |channels: Option<Vec<&str>>| notice("late", "customer", channels);
        assert_eq!(first(&late(Some(vec!["email", "sms"]))).0, [("email", None, Some("sms"))]);
        assert_eq!(first(&late(None)).0, [("sms", None, Some("email"))], "SMS first when they did not say");
        assert_eq!(first(&late(Some(vec!["sms"]))).0, [("sms", None, None)], "never a channel they did not choose");
        assert_eq!(first(&late(Some(vec!["push", "email", "email"]))).0, [("email", None, None)]);
        // No number: the email goes instead, and the skip says why.
        let mut no_phone = (*late(Some(vec!["sms", "email"]))).clone();
        no_phone.recipient.as_mut().unwrap().phone = None;
        assert_eq!(first(&Arc::new(no_phone)), (vec![("email", Some("sms"), None)], vec!["no_contact"]));
        // No email after a reachable first: nothing to say about it.
        let mut no_email = (*late(Some(vec!["sms", "email"]))).clone();
        no_email.recipient.as_mut().unwrap().email = None;
        assert_eq!(first(&Arc::new(no_email)), (vec![("sms", None, None)], vec![]));
        assert_eq!(first(&late(Some(vec![]))), (vec![], vec!["opted_out"]));
    }
}
