//! Message templates: minijinja files in `rules/templates/<locale>/`, one
//! per audience, rule and channel (`customer/late.sms.j2`,
//! `customer/late.email.j2` with `subject` and `body` blocks), and per
//! locale the email layouts `_email.txt.j2` and `_email.html.j2` that wrap
//! every body (greeting, tracking number and link, unsubscribe).
//!
//! Locales fall back `fr-CA` → `fr` → the default. Undefined variables are
//! errors, and [`Templates::check`] renders every template of every locale
//! with sample data, so a typo fails `forewarn check`, not a message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::rules::{Audience, RuleSet};

/// The variables every template sees. Absent facts are `none`, never undefined.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Context {
    pub rule: String,
    pub state: String,
    pub severity: String,
    /// The recipient's name (customers) or the branch's (branches).
    pub name: Option<String>,
    pub parcel: Option<String>,
    pub parcel_state: Option<String>,
    pub reason: Option<String>,
    pub facility: Option<String>,
    pub country: Option<String>,
    /// Instants are shown in the recipient's time zone, `YYYY-MM-DD HH:MM`.
    pub at: String,
    pub promised_by: Option<String>,
    pub return_by: Option<String>,
    pub last_scan_at: Option<String>,
    /// When the parcel is now expected, in the recipient's zone and language.
    pub expected: Option<Expected>,
    pub tracking_url: Option<String>,
    pub reschedule_url: Option<String>,
    pub claim_url: Option<String>,
    pub unsubscribe_url: Option<String>,
    /// The parcel's branch as customers see it.
    pub branch: Option<BranchView>,
    pub branch_code: Option<String>,
    pub branch_name: Option<String>,
    pub count: Option<u32>,
    pub window: Option<String>,
    pub usual: Option<f64>,
    /// `own`, `network` (a branch with no history of its own yet, against its
    /// peers) or `floor` (no `usual`).
    pub usual_from: Option<String>,
    pub volume: Option<u32>,
    /// Digest: its date.
    pub date: Option<String>,
}

/// The expected arrival as a template writes it: `kind` says which of the
/// fields the sentence needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// `hours` (on `day`, between `from` and `to`), `day` (on `day`) or
    /// `days` (between `day` and `last_day`).
    pub kind: &'static str,
    /// The (first) day, in the recipient's language: "Thursday 19 November".
    pub day: String,
    pub last_day: String,
    /// The same, short, for SMS: "Thu 19 Nov".
    pub short_day: String,
    pub short_last_day: String,
    /// `HH:MM`, for `hours`.
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BranchView {
    pub name: String,
    pub address: String,
    pub hours: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Sms,
    Email,
}

impl Channel {
    fn suffix(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }
}

/// A rendered email.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailText {
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub struct Templates {
    env: Environment<'static>,
    /// Locale → template names without the locale (`customer/late.sms`).
    names: BTreeMap<String, BTreeSet<String>>,
    default_locale: String,
}

/// Escapes text for HTML and makes paragraphs of its blank-line-separated parts.
fn paragraphs(text: String) -> Value {
    let mut out = String::with_capacity(text.len() + 32);
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        out.push_str("<p>");
        for (i, line) in para.lines().enumerate() {
            if i > 0 {
                out.push_str("<br>\n");
            }
            for c in line.chars() {
                match c {
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '&' => out.push_str("&amp;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#x27;"),
                    c => out.push(c),
                }
            }
        }
        out.push_str("</p>\n");
    }
    Value::from_safe_string(out)
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    if let (Some(name), Some(line)) = (e.name(), e.line()) {
        text = format!("{name}:{line}: {text}");
    }
    text
}

impl Templates {
    /// Reads every `*.j2` under `dir/<locale>/`; syntax errors name file:line.
    pub fn load(dir: &Path, default_locale: &str) -> Result<Templates, Vec<String>> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(
            |name| {
                if name.ends_with(".html.j2") {
                    AutoEscape::Html
                } else {
                    AutoEscape::None
                }
            },
        );
        env.set_keep_trailing_newline(false);
        env.add_filter("paragraphs", paragraphs);
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut errors = Vec::new();
        let locales = std::fs::read_dir(dir).map_err(|e| {
            vec![format!(
                "templates {}: {e} (set dispatch.templates, or run with --role detect for no notifications)",
                dir.display()
            )]
        })?;
        for locale in locales.flatten().filter(|e| e.path().is_dir()) {
            let locale_name = locale.file_name().to_string_lossy().into_owned();
            let mut stack = vec![locale.path()];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else { continue };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(dir) else { continue };
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let Some(stem) = rel.strip_suffix(".j2") else { continue };
                    match std::fs::read_to_string(&path) {
                        Ok(source) => match env.add_template_owned(rel.clone(), source) {
                            Ok(()) => {
                                let local = stem[locale_name.len() + 1..].to_string();
                                names.entry(locale_name.clone()).or_default().insert(local);
                            }
                            Err(e) => errors.push(format!("{}: {}", dir.join(&rel).display(), describe(&e))),
                        },
                        Err(e) => errors.push(format!("{}: {e}", path.display())),
                    }
                }
            }
        }
        if !names.contains_key(default_locale) {
            errors.push(format!("{}: no templates for the default locale {default_locale:?}", dir.display()));
        }
        if errors.is_empty() {
            Ok(Templates { env, names, default_locale: default_locale.to_string() })
        } else {
            Err(errors)
        }
    }

    /// The served locale for a BCP 47 tag: the tag, its language, or the default.
    pub fn locale<'a>(&'a self, tag: Option<&str>) -> &'a str {
        let tag = tag.unwrap_or("").trim();
        let language = tag.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
        for candidate in [tag.to_string(), language] {
            if let Some((found, _)) = self.names.get_key_value(candidate.as_str()) {
                return found;
            }
        }
        &self.default_locale
    }

    /// Whether `locale` (or the default) has the template `name` for `channel`.
    pub fn has(&self, locale: &str, name: &str, channel: Channel) -> bool {
        let key = format!("{name}.{}", channel.suffix());
        [locale, self.default_locale.as_str()].iter().any(|l| self.names.get(*l).is_some_and(|n| n.contains(&key)))
    }

    fn template(&self, locale: &str, name: &str, channel: Channel) -> Result<minijinja::Template<'_, '_>, String> {
        let key = format!("{name}.{}", channel.suffix());
        let locale =
            if self.names.get(locale).is_some_and(|n| n.contains(&key)) { locale } else { &self.default_locale };
        self.env.get_template(&format!("{locale}/{key}.j2")).map_err(|e| describe(&e))
    }

    /// An SMS text, trimmed.
    pub fn sms(&self, locale: &str, name: &str, ctx: &Context) -> Result<String, String> {
        let t = self.template(locale, name, Channel::Sms)?;
        Ok(t.render(ctx).map_err(|e| describe(&e))?.trim().to_string())
    }

    /// An email: its `subject` and `body` blocks, the body wrapped in the locale's layouts.
    pub fn email(&self, locale: &str, name: &str, ctx: &Context) -> Result<EmailText, String> {
        let t = self.template(locale, name, Channel::Email)?;
        let mut captured = t.render_captured(ctx).map_err(|e| describe(&e))?;
        let (subject, body) = captured.with_state_mut(|state| -> Result<_, String> {
            let subject = state.render_block("subject").map_err(|e| describe(&e))?;
            Ok((subject, state.render_block("body").map_err(|e| describe(&e))?))
        })?;
        let layout_locale = if self.names.get(locale).is_some_and(|n| n.contains("_email.txt")) {
            locale
        } else {
            &self.default_locale
        };
        let wrapped = minijinja::context! { body => body.trim(), ..Value::from_serialize(ctx) };
        let render = |kind: &str| -> Result<String, String> {
            let layout =
                self.env.get_template(&format!("{layout_locale}/_email.{kind}.j2")).map_err(|e| describe(&e))?;
            layout.render(&wrapped).map_err(|e| describe(&e))
        };
        Ok(EmailText {
            // One line, whatever the template did: a subject cannot carry a header.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: render("txt")?,
            html: render("html")?,
        })
    }

    /// The templates of a pack, loaded and checked against its rules: what
    /// `forewarn check` says, and what a reload must pass before it takes the
    /// pack (a broken template was once reloaded as "rules reloaded").
    pub fn check_pack(dir: &Path, default_locale: &str, set: &RuleSet) -> Result<Templates, Vec<String>> {
        let templates = Templates::load(dir, default_locale)?;
        let mut problems = templates.check();
        let voices = set.rules.iter().map(|r| &r.voice).chain(set.branch_rules.iter().map(|r| &r.voice));
        for voice in voices.filter(|v| v.audience.includes(Audience::CUSTOMER)) {
            let name = format!("customer/{}", voice.id);
            if !templates.has(default_locale, &name, Channel::Sms)
                || !templates.has(default_locale, &name, Channel::Email)
            {
                problems.push(format!(
                    "rule `{}` speaks to customers but has no {name}.sms.j2 and {name}.email.j2",
                    voice.id
                ));
            }
        }
        if problems.is_empty() {
            Ok(templates)
        } else {
            Err(problems)
        }
    }

    /// Renders every template of every locale with sample data, and checks
    /// that every locale has the default locale's templates. Returns the problems.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let expected = self.names.get(&self.default_locale).cloned().unwrap_or_default();
        for (locale, names) in &self.names {
            for missing in expected.difference(names) {
                problems.push(format!("{locale}: {missing}.j2 is missing (the {} locale has it)", self.default_locale));
            }
            for name in names.iter().filter(|n| !n.starts_with('_') && !n.contains("/_")) {
                let (base, channel) = match name.rsplit_once('.') {
                    Some((base, "sms")) => (base, Channel::Sms),
                    Some((base, "email")) => (base, Channel::Email),
                    _ => {
                        problems.push(format!("{locale}/{name}.j2: the name must end in .sms.j2 or .email.j2"));
                        continue;
                    }
                };
                for ctx in samples() {
                    let result = match channel {
                        Channel::Sms => self.sms(locale, base, &ctx).map(|_| ()),
                        Channel::Email => self.email(locale, base, &ctx).map(|_| ()),
                    };
                    if let Err(e) = result {
                        problems.push(format!("{locale}/{name}.j2 with sample data: {e}"));
                        break;
                    }
                }
            }
        }
        problems
    }

    pub fn locales(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }
}

/// Sample contexts covering every reason and state the templates branch on,
/// with everything present and with everything optional absent.
pub fn samples() -> Vec<Context> {
    let full = Context {
        rule: "late".into(),
        state: "firing".into(),
        severity: "warning".into(),
        name: Some("Léa Martin".into()),
        parcel: Some("1Z999AA10123456784".into()),
        parcel_state: Some("out_for_delivery".into()),
        reason: Some("no_one_home".into()),
        facility: Some("FR-LYS-HUB".into()),
        country: Some("FR".into()),
        at: "2026-11-20 08:15".into(),
        promised_by: Some("2026-11-20 18:00".into()),
        return_by: Some("2026-11-27 19:00".into()),
        last_scan_at: Some("2026-11-19 22:40".into()),
        expected: Some(Expected {
            kind: "hours",
            day: "Saturday 21 November".into(),
            last_day: "Saturday 21 November".into(),
            short_day: "Sat 21 Nov".into(),
            short_last_day: "Sat 21 Nov".into(),
            from: "10:00".into(),
            to: "18:00".into(),
        }),
        tracking_url: Some("https://track.example.com/1Z999AA10123456784".into()),
        reschedule_url: Some("https://track.example.com/1Z999AA10123456784/reschedule".into()),
        claim_url: Some("https://track.example.com/1Z999AA10123456784/claim".into()),
        unsubscribe_url: Some("https://track.example.com/unsubscribe/1Z999AA10123456784".into()),
        branch: Some(BranchView {
            name: "Paris 12".into(),
            address: "84 rue de la République, Paris".into(),
            hours: "lun.–ven. 9h–19h".into(),
        }),
        branch_code: Some("FR-PAR-12".into()),
        branch_name: Some("Paris 12".into()),
        count: Some(14),
        window: Some("6h".into()),
        usual: Some(3.5),
        usual_from: Some("own".into()),
        volume: Some(120),
        date: Some("2026-11-20".into()),
    };
    let mut out = vec![full.clone()];
    for reason in ["address_unknown", "refused", "access_denied", "documents_missing", "duties_unpaid", "inspection"] {
        out.push(Context { reason: Some(reason.into()), ..full.clone() });
    }
    for (rule, state) in [("customs_hold", "out_for_delivery"), ("stalled", "delivered"), ("damaged", "collected")] {
        out.push(Context { rule: rule.into(), parcel_state: Some(state.into()), ..full.clone() });
    }
    for kind in ["day", "days"] {
        let expected = full.expected.clone().map(|e| Expected { kind, last_day: "Monday 23 November".into(), ..e });
        out.push(Context { expected, ..full.clone() });
    }
    // A branch with no history of its own yet, judged by the floor.
    out.push(Context { rule: "branch_delay_spike".into(), usual_from: Some("network".into()), ..full.clone() });
    out.push(Context {
        rule: "branch_delay_spike".into(),
        usual: None,
        usual_from: Some("floor".into()),
        ..full.clone()
    });
    out.push(Context {
        rule: full.rule.clone(),
        state: full.state.clone(),
        severity: full.severity.clone(),
        at: full.at.clone(),
        ..Context::default()
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/templates"), "en").unwrap()
    }

    #[test]
    fn the_default_templates_render_in_every_locale() {
        let t = pack();
        assert_eq!(t.check(), Vec::<String>::new());
        assert_eq!(t.locales().collect::<Vec<_>>(), ["en", "fr", "zh"]);
    }

    #[test]
    fn locales_fall_back_to_the_language_then_the_default() {
        let t = pack();
        assert_eq!(t.locale(Some("fr-CA")), "fr");
        assert_eq!(t.locale(Some("zh-Hans-CN")), "zh");
        assert_eq!(t.locale(Some("de-DE")), "en");
        assert_eq!(t.locale(None), "en");
    }

    #[test]
    fn an_unknown_variable_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("en/customer")).unwrap();
        std::fs::write(dir.path().join("en/customer/late.sms.j2"), "Parcel {{ parcle }} is late").unwrap();
        let problems = Templates::load(dir.path(), "en").unwrap().check();
        assert!(problems[0].contains("en/customer/late.sms.j2") && problems[0].contains("undefined"), "{problems:?}");
    }

    #[test]
    fn html_escapes_what_came_from_outside() {
        let t = pack();
        let ctx = Context { name: Some("<b>Eve</b>".into()), ..samples().remove(0) };
        let mail = t.email("en", "customer/late", &ctx).unwrap();
        assert!(mail.html.contains("Hello &lt;b&gt;Eve&lt;") && !mail.html.contains("<b>Eve"), "{}", mail.html);
        assert!(mail.text.contains("Hello <b>Eve</b>"));
    }

    #[test]
    fn messages_carry_what_the_customer_needs() {
        let t = pack();
        let ctx = Context { rule: "delivery_failed".into(), ..samples().remove(0) };
        let sms = t.sms("fr", "customer/delivery_failed", &ctx).unwrap();
        expect_test::expect![[r#"Nous n'avons pas pu livrer 1Z999AA10123456784 : personne n'était présent. Reprogrammer : https://track.example.com/1Z999AA10123456784/reschedule ou retrait à Paris 12, 84 rue de la République, Paris (lun.–ven. 9h–19h)"#]].assert_eq(&sms);
        let mail = t
            .email("zh", "customer/customs_hold", &Context { reason: Some("documents_missing".into()), ..ctx })
            .unwrap();
        assert_eq!(mail.subject, "您的包裹1Z999AA10123456784被海关扣留");
        assert!(mail.text.contains("缺少的材料：报关资料"), "{}", mail.text);
        assert!(mail.text.contains("https://track.example.com/1Z999AA10123456784"));
    }

    #[test]
    fn a_branch_warning_says_whether_it_knows_the_branch_usual() {
        let t = pack();
        let known = Context { rule: "branch_delay_spike".into(), ..samples().remove(0) };
        let peers = Context { usual_from: Some("network".into()), ..known.clone() };
        let floor = Context { usual: None, usual_from: Some("floor".into()), ..known.clone() };
        let sms = |ctx| t.sms("en", "branch/warning", ctx).unwrap();
        assert!(sms(&known).ends_with("(14 in 6h, usually 3.5)"), "{}", sms(&known));
        assert!(sms(&peers).ends_with("(14 in 6h, 3.5 at its size elsewhere)"), "{}", sms(&peers));
        assert!(sms(&floor).ends_with("(14 in 6h, no usual yet)"), "{}", sms(&floor));
    }
}
