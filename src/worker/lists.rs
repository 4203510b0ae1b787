//! Lists rules look things up in: `[lists.NAME] file = "…"`, `kind = "string"` (one entry per
//! line) or `"cidr"` (one network or address per line); `#` starts a comment, blank lines are
//! skipped. Read when the rules file is loaded (at start and on SIGHUP), every bad line named
//! with its file and line. Conditions see them as `lists.NAME`: `subject in lists.trusted`
//! (a hash lookup, whatever the list's size) and `cidr_contains(lists.vpn, event.data.ip)`
//! (one lookup per prefix length the list uses).

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::common::types::{CelBool, CelMap, CelMapKey, CelString, Type};
use cel::common::value::{StaticVal, Val};
use cel::{ExecutionError, common::traits::Container};
use ipnet::IpNet;
use serde::Deserialize;

use crate::config::Document;

/// `[lists.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    file: PathBuf,
    #[serde(default)]
    kind: ListKind,
}

/// What a list's lines are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Strings, compared whole (`subject in lists.NAME`).
    #[default]
    String,
    /// IP networks (`10.0.0.0/8`) or addresses (`cidr_contains(lists.NAME, ip)`).
    Cidr,
}

/// A list's entries.
#[derive(Debug, Clone)]
pub enum List {
    /// A string list.
    Strings(StringList),
    /// A CIDR list.
    Cidrs(CidrList),
}

impl List {
    /// How many entries it holds.
    pub fn len(&self) -> usize {
        match self {
            Self::Strings(s) => s.0.len(),
            Self::Cidrs(c) => c.0.len,
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every `[lists.*]` of a rules file, and the CEL map conditions see as `lists`.
#[derive(Debug, Clone)]
pub struct Lists {
    by_name: BTreeMap<String, List>,
    cel: Arc<CelMap<'static>>,
}

impl Default for Lists {
    fn default() -> Self {
        Self::new(BTreeMap::new())
    }
}

impl Lists {
    fn new(by_name: BTreeMap<String, List>) -> Self {
        let map: std::collections::HashMap<CelMapKey<'static>, Box<dyn Val>> = by_name
            .iter()
            .map(|(name, list)| {
                let value: Box<dyn Val> = match list {
                    List::Strings(s) => Box::new(s.clone()),
                    List::Cidrs(c) => Box::new(c.clone()),
                };
                (CelMapKey::from(name.clone()), value)
            })
            .collect();
        Self {
            by_name,
            cel: Arc::new(CelMap::from(map)),
        }
    }

    /// Reads the files of `doc`'s `[lists.*]` (relative to the rules file's directory),
    /// reporting each problem at its key.
    pub(crate) fn load(doc: &mut Document<'_>) -> Self {
        let raw: Option<BTreeMap<String, ::config::Value>> = doc.section("lists");
        let base = Path::new(doc.file())
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut by_name = BTreeMap::new();
        for (name, table) in raw.unwrap_or_default() {
            let key = format!("lists.{name}");
            let Some(raw) = doc.deserialize_at::<RawList>(&key, table) else {
                continue;
            };
            let path = base.join(&raw.file);
            match read(&path, raw.kind) {
                Ok(list) => {
                    by_name.insert(name, list);
                }
                Err(reason) => doc.problem(&format!("{key}.file"), reason),
            }
        }
        Self::new(by_name)
    }

    /// The list called `name`.
    pub fn get(&self, name: &str) -> Option<&List> {
        self.by_name.get(name)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The `lists` map conditions see.
    pub fn cel(&self) -> &CelMap<'static> {
        &self.cel
    }
}

/// Reads a list file: an entry per line, `#` comments and blank lines skipped.
fn read(path: &Path, kind: ListKind) -> Result<List, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let entries = text.lines().enumerate().filter_map(|(i, line)| {
        let entry = line.split('#').next().unwrap_or_default().trim();
        (!entry.is_empty()).then_some((i + 1, entry))
    });
    match kind {
        ListKind::String => Ok(List::Strings(StringList(Arc::new(
            entries.map(|(_, e)| Box::from(e)).collect(),
        )))),
        ListKind::Cidr => {
            let mut set = CidrSet::default();
            for (line, entry) in entries {
                let net = entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "{}:{line}: {entry:?} is not an IP network or address \
                             (write 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)",
                            path.display()
                        )
                    })?;
                set.insert(net);
            }
            Ok(List::Cidrs(CidrList(Arc::new(set))))
        }
    }
}

/// A string list as a CEL value: `x in lists.NAME` is a hash lookup.
#[derive(Debug, Clone)]
pub struct StringList(Arc<HashSet<Box<str>>>);

static STRING_LIST: std::sync::LazyLock<Type> =
    std::sync::LazyLock::new(|| Type::new_opaque_type("hookwarden.StringList"));
static CIDR_LIST: std::sync::LazyLock<Type> =
    std::sync::LazyLock::new(|| Type::new_opaque_type("hookwarden.CidrList"));

impl StringList {
    /// Whether `entry` is on the list.
    pub fn contains(&self, entry: &str) -> bool {
        self.0.contains(entry)
    }
}

impl Val for StringList {
    fn get_type(&self) -> &Type {
        <Self as Val>::cel_type()
    }
    fn cel_type() -> &'static Type {
        &STRING_LIST
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for StringList {}

impl Container for StringList {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        // Only strings are on a string list; anything else (a number, null) is not.
        Ok(value
            .downcast_ref::<CelString<'_>>()
            .is_some_and(|s| self.0.contains(s.inner())))
    }
}

/// Networks, one set of masked addresses per prefix length: a lookup masks the address once
/// per length the list uses (at most 33 for IPv4, 129 for IPv6), whatever the list's size.
#[derive(Debug, Default)]
pub struct CidrSet {
    v4: BTreeMap<u8, HashSet<u32>>,
    v6: BTreeMap<u8, HashSet<u128>>,
    len: usize,
}

impl CidrSet {
    fn insert(&mut self, net: IpNet) {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => {
                self.v4
                    .entry(n.prefix_len())
                    .or_default()
                    .insert(u32::from(n.network()));
            }
            IpNet::V6(n) => {
                self.v6
                    .entry(n.prefix_len())
                    .or_default()
                    .insert(u128::from(n.network()));
            }
        }
        self.len += 1;
    }

    /// Whether `ip` is inside one of the networks. An IPv4-mapped IPv6 address
    /// (`::ffff:192.0.2.7`) is looked up as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let bits = u32::from(ip);
                self.v4.iter().any(|(&len, nets)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    nets.contains(&(bits & mask))
                })
            }
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                self.v6.iter().any(|(&len, nets)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    nets.contains(&(bits & mask))
                })
            }
        }
    }
}

/// A CIDR list as a CEL value, for `cidr_contains`.
#[derive(Debug, Clone)]
pub struct CidrList(Arc<CidrSet>);

impl Val for CidrList {
    fn get_type(&self) -> &Type {
        <Self as Val>::cel_type()
    }
    fn cel_type() -> &'static Type {
        &CIDR_LIST
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for CidrList {}

/// `cidr_contains(lists.NAME, ip)`: whether the address is in one of the list's networks. A
/// string that is not an IP address is an error (the rule's condition fails, as recorded).
pub fn cidr_contains(list: &CidrList, ip: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let text = ip.inner();
    let ip: IpAddr = text.trim().parse().map_err(|_| {
        ExecutionError::function_error("cidr_contains", format!("{text:?} is not an IP address"))
    })?;
    Ok(CelBool::from(list.0.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(lines: &[&str]) -> CidrSet {
        let mut set = CidrSet::default();
        for l in lines {
            set.insert(l.parse().unwrap());
        }
        set
    }

    #[test]
    fn cidr_sets_match_by_prefix_in_both_families() {
        let set = cidrs(&["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "0.0.0.0/0"]);
        assert!(set.contains("10.200.3.4".parse().unwrap()));
        assert!(set.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!set.contains("2001:db9::1".parse().unwrap()));
        // /0 holds every IPv4 address, and an IPv4-mapped IPv6 one too.
        assert!(set.contains("203.0.113.9".parse().unwrap()));
        assert!(set.contains("::ffff:203.0.113.9".parse().unwrap()));
        let narrow = cidrs(&["192.0.2.7/32", "10.1.2.3/16"]);
        assert!(narrow.contains("192.0.2.7".parse().unwrap()));
        assert!(!narrow.contains("192.0.2.8".parse().unwrap()));
        // A host address with a prefix counts as its network.
        assert!(narrow.contains("10.1.200.1".parse().unwrap()));
    }

    /// Rules in `dir` with a string list `trusted` and a CIDR list `vpn`, and `when`.
    fn rules_with_lists(
        dir: &Path,
        when: &str,
    ) -> Result<crate::worker::config::WorkerConfig, String> {
        std::fs::write(dir.join("trusted.txt"), "u1\nu2\n").unwrap();
        std::fs::write(dir.join("vpn.txt"), "10.0.0.0/8\n2001:db8::/32\n").unwrap();
        let text = format!(
            r#"
[lists.trusted]
file = "trusted.txt"
[lists.vpn]
file = "vpn.txt"
kind = "cidr"
[[subjects]]
provider = "p"
types = ["t"]
subject = "/id"
[[rules]]
name = "r"
events = ["p:t"]
when = '{when}'
actions = []
"#
        );
        let file = dir.join("rules.toml");
        crate::worker::config::WorkerConfig::parse(
            &file.display().to_string(),
            &text,
            &std::collections::HashMap::new(),
        )
        .map_err(|e| e.to_string())
    }

    fn evaluate(
        config: &crate::worker::config::WorkerConfig,
        subject: &str,
        event: serde_json::Value,
    ) -> Result<bool, String> {
        let rules = &config.rules;
        let facts = crate::worker::facts::Facts {
            event: &event,
            provider: "p",
            event_type: "t",
            event_id: "e",
            subject,
            score: &BTreeMap::new(),
            previous_score: &BTreeMap::new(),
            previous_at: None,
            env: &BTreeMap::new(),
            lists: &rules.lists,
            enrich: &BTreeMap::new(),
        };
        rules.rules[0].when.evaluate(&facts)
    }

    #[test]
    fn conditions_look_up_strings_and_networks() {
        let dir = std::env::temp_dir().join(format!("hw-lists-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = rules_with_lists(
            &dir,
            "!(subject in lists.trusted) && cidr_contains(lists.vpn, event.ip)",
        )
        .unwrap();
        let ip = |ip: &str| serde_json::json!({ "ip": ip });
        assert_eq!(evaluate(&config, "u9", ip("10.1.2.3")), Ok(true));
        assert_eq!(evaluate(&config, "u9", ip("2001:db8::7")), Ok(true));
        assert_eq!(evaluate(&config, "u9", ip("192.0.2.1")), Ok(false));
        assert_eq!(evaluate(&config, "u1", ip("10.1.2.3")), Ok(false));
        let bad = evaluate(&config, "u9", ip("ten.one")).unwrap_err();
        assert!(bad.contains("\"ten.one\" is not an IP address"), "{bad}");
        // A list no [lists.*] defines is a load error naming the ones that exist.
        let unknown = match rules_with_lists(&dir, "subject in lists.trustd") {
            Ok(_) => panic!("an unknown list loaded"),
            Err(err) => err,
        };
        assert!(
            unknown.contains("rules[0].when: no list named \"trustd\"; defined: trusted, vpn"),
            "{unknown}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn list_files_skip_comments_and_name_the_bad_line() {
        let dir = std::env::temp_dir().join(format!("hw-lists-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("trusted.txt");
        std::fs::write(&good, "# staff\nu1\n\n  u2  # the founder\n").unwrap();
        match read(&good, ListKind::String).unwrap() {
            List::Strings(s) => {
                assert!(s.contains("u1") && s.contains("u2"));
                assert_eq!(s.0.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let bad = dir.join("vpn.txt");
        std::fs::write(&bad, "10.0.0.0/8\n# ok\n10.0.0.0/33\n").unwrap();
        let err = read(&bad, ListKind::Cidr).unwrap_err();
        assert!(
            err.ends_with(
                "vpn.txt:3: \"10.0.0.0/33\" is not an IP network or address (write 10.0.0.0/8, \
                 2001:db8::/32 or 192.0.2.7)"
            ),
            "{err}"
        );
        let missing = read(&dir.join("none.txt"), ListKind::String).unwrap_err();
        assert!(missing.starts_with("cannot read"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
