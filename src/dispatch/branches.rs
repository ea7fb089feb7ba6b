//! The branch directory (`rules/directory/branches.toml`): who hears of a
//! branch's problems, and what customer messages say about the branch.
//! Read strictly and checked whole at start and on reload, so a typo in a
//! time zone or a phone number is an error naming the branch, not a message
//! that silently never goes.

use std::collections::HashMap;
use std::path::Path;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::address::{e164, email};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    pub name: String,
    pub address: String,
    /// Opening hours as shown to customers.
    pub hours: String,
    /// IANA zone: the branch's quiet hours and digest time.
    pub tz: String,
    /// The language of the branch's warnings.
    #[serde(default = "english")]
    pub locale: String,
    pub email: Option<String>,
    /// E.164: urgent warnings by SMS, at any hour.
    pub on_call: Option<String>,
    /// Every warning as signed JSON.
    pub webhook: Option<String>,
}

fn english() -> String {
    "en".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    branch: HashMap<String, Branch>,
}

/// Every branch by its code.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    branches: HashMap<String, Branch>,
}

impl Directory {
    /// Reads and checks the directory; a missing file is an empty directory.
    pub fn load(path: &Path) -> Result<Directory, String> {
        Directory::load_with(path, true)
    }

    /// Reads the directory to show it (names, addresses, zones), its
    /// contacts unchecked: checking one phone number loads the numbering
    /// plans of every country (~9 MB), which a process that never calls a
    /// branch need not hold. Dispatch, which calls them, checks them at start.
    pub fn load_to_show(path: &Path) -> Result<Directory, String> {
        Directory::load_with(path, false)
    }

    /// Reads the directory, checking the contacts if `contacts`.
    fn load_with(path: &Path, contacts: bool) -> Result<Directory, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Directory::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Directory::read(&text, contacts).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Directory, String> {
        Directory::read(text, true)
    }

    fn read(text: &str, contacts: bool) -> Result<Directory, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        for (code, b) in &file.branch {
            b.tz.parse::<Tz>().map_err(|_| format!("branch {code}: tz {:?} is not an IANA time zone", b.tz))?;
            if let (true, Some(phone)) = (contacts, &b.on_call) {
                e164(phone).map_err(|e| format!("branch {code}: on_call: {e}"))?;
            }
            if let (true, Some(address)) = (contacts, &b.email) {
                email(address).map_err(|e| format!("branch {code}: email: {e}"))?;
            }
        }
        Ok(Directory { branches: file.branch })
    }

    pub fn get(&self, code: &str) -> Option<&Branch> {
        self.branches.get(code)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Branch)> {
        self.branches.iter()
    }

    pub fn len(&self) -> usize {
        self.branches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/directory/branches.toml");
        let dir = Directory::load(&path).unwrap();
        assert_eq!(dir.len(), 32);
        assert_eq!(dir.get("FR-PAR-12").unwrap().tz, "Europe/Paris");
    }

    #[test]
    fn a_bad_zone_or_phone_names_the_branch() {
        let bad_tz = "[branch.X1]\nname='x'\naddress='a'\nhours='h'\ntz='Mars/Olympus'\n";
        assert!(Directory::parse(bad_tz).unwrap_err().contains("branch X1: tz \"Mars/Olympus\""));
        let bad_phone = "[branch.X2]\nname='x'\naddress='a'\nhours='h'\ntz='UTC'\non_call='0612'\n";
        assert!(Directory::parse(bad_phone).unwrap_err().contains("branch X2: on_call"));
        let shown = Directory::read(bad_phone, false).expect("contacts are not checked to show the directory");
        assert_eq!(shown.get("X2").and_then(|b| b.on_call.as_deref()), Some("0612"));
        assert!(Directory::read(bad_tz, false).is_err(), "zones are, as the directory's pages use them");
    }
}
