//! kubespray's Ansible inventories, INI (`inventory.ini`) and YAML (`hosts.yaml`), read into
//! one model of hosts, groups and variables, then turned into an [`Inventory`].
//!
//! Roles come from kubespray's group names, current and older: `kube_control_plane`
//! (`kube-master`, `kube_master`, `kube-controlplane`) and `kube_node` (`kube-node`); hosts of
//! child groups count (`[kube_control_plane:children]`, YAML `children:`). Other groups (`etcd`,
//! `k8s_cluster`, `calico_rr`, a bastion) are read and ignored. Of the variables only the
//! connection ones matter; see [`CONNECTION_VARS`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use super::{expand_tilde, range, Inventory, InventoryError, Node, Role, SshDefaults, MAX_NODES};

type Vars = HashMap<String, String>;

const CONTROL_PLANE_GROUPS: [&str; 4] =
    ["kube_control_plane", "kube-master", "kube_master", "kube-controlplane"];
const WORKER_GROUPS: [&str; 2] = ["kube_node", "kube-node"];

// Each list: Ansible's name first, then its older aliases (kubespray's `ip` is the address
// Kubernetes binds and advertises; `access_ip` the one other nodes use, a fallback here).
const HOST: [&str; 2] = ["ansible_host", "ansible_ssh_host"];
const PORT: [&str; 2] = ["ansible_port", "ansible_ssh_port"];
const USER: [&str; 2] = ["ansible_user", "ansible_ssh_user"];
const KEY: [&str; 2] = ["ansible_ssh_private_key_file", "ansible_private_key_file"];
const ADVERTISE: [&str; 2] = ["ip", "access_ip"];

/// The variables hapki reads; every other variable (`etcd_member_name`, …) is Ansible's business.
pub(crate) const CONNECTION_VARS: [&[&str]; 5] = [&HOST, &PORT, &USER, &KEY, &ADVERTISE];

fn is_connection_var(key: &str) -> bool {
    CONNECTION_VARS.iter().any(|l| l.contains(&key))
}

#[derive(Default)]
struct Group {
    hosts: Vec<String>,
    children: Vec<String>,
    vars: Vars,
}

/// Hosts, groups and variables as Ansible sees them.
#[derive(Default)]
pub(crate) struct Ansible {
    host_vars: HashMap<String, Vars>,
    groups: HashMap<String, Group>,
}

impl Ansible {
    /// Adds the hosts `pattern` names (a range expands) to `group`, with their variables.
    fn add_hosts(&mut self, group: &str, pattern: &str, vars: &Vars) -> Result<(), String> {
        let names = if range::is_range(pattern) {
            range::expand(pattern, MAX_NODES)?
        } else {
            vec![pattern.to_owned()]
        };
        for name in names {
            if !self.host_vars.contains_key(&name) && self.host_vars.len() >= MAX_NODES {
                return Err(format!(
                    "more than {MAX_NODES} hosts (Kubernetes' largest supported cluster); split the inventory"
                ));
            }
            let own = self.host_vars.entry(name.clone()).or_default();
            own.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            let members = &mut self.groups.entry(group.to_owned()).or_default().hosts;
            if !members.contains(&name) {
                members.push(name);
            }
        }
        Ok(())
    }

    fn add_child(&mut self, group: &str, child: &str) {
        self.groups.entry(child.to_owned()).or_default();
        let children = &mut self.groups.entry(group.to_owned()).or_default().children;
        if !children.iter().any(|c| c == child) {
            children.push(child.to_owned());
        }
    }

    /// Keeps what hapki reads: `all`'s variables (`cluster_name`, `control_plane_endpoint` too),
    /// the connection variables of other groups.
    fn set_group_var(&mut self, group: &str, key: &str, value: String) {
        if group == "all" || is_connection_var(key) {
            self.groups.entry(group.to_owned()).or_default().vars.insert(key.to_owned(), value);
        }
    }

    /// A group's hosts as Ansible orders them: its own, then its children's, depth first; each
    /// once. A cycle of children ends where it closes.
    fn members(&self, group: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut seen_groups = HashSet::new();
        let mut stack = vec![group];
        while let Some(g) = stack.pop() {
            let Some(grp) = self.groups.get(g).filter(|_| seen_groups.insert(g)) else { continue };
            for h in &grp.hosts {
                if !out.contains(&h.as_str()) {
                    out.push(h);
                }
            }
            stack.extend(grp.children.iter().rev().map(String::as_str));
        }
        out
    }

    fn role_members(&self, groups: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for g in groups {
            for h in self.members(g) {
                if !out.iter().any(|o| o == h) {
                    out.push(h.to_owned());
                }
            }
        }
        out
    }

    /// Turns the model into an inventory (validated by the caller).
    pub(crate) fn into_inventory(self, path: &Path) -> Result<Inventory, InventoryError> {
        let invalid = |message: String| InventoryError::Invalid { path: path.to_owned(), message };
        let control_planes = self.role_members(&CONTROL_PLANE_GROUPS);
        let mut workers = self.role_members(&WORKER_GROUPS);
        workers.retain(|w| !control_planes.contains(w));
        let scoped = ScopedVars::new(&self);
        let mut nodes = Vec::with_capacity(control_planes.len() + workers.len());
        for (names, role) in [(&control_planes, Role::ControlPlane), (&workers, Role::Worker)] {
            for name in names {
                nodes.push(self.node(name, role, &scoped).map_err(invalid)?);
            }
        }
        let empty = Vars::new();
        let all = self.groups.get("all").map_or(&empty, |g| &g.vars);
        let all_var = |keys: &[&str]| keys.iter().find_map(|k| all.get(*k)).cloned();
        let ssh = SshDefaults {
            user: all_var(&USER),
            port: all_var(&PORT).map(|p| port("all vars", &p)).transpose().map_err(invalid)?,
            identity: all_var(&KEY).map(|p| expand_tilde(&p)),
            known_hosts: None,
        };
        Ok(Inventory {
            cluster_name: all.get("cluster_name").cloned().unwrap_or_else(|| "kubernetes".into()),
            control_plane_endpoint: all.get("control_plane_endpoint").cloned(),
            ssh,
            nodes,
        })
    }

    fn node(&self, name: &str, role: Role, scoped: &ScopedVars) -> Result<Node, String> {
        let var = |keys: &[&str]| -> Result<Option<String>, String> {
            let own = self.host_vars.get(name);
            match keys.iter().find_map(|k| own.and_then(|v| v.get(*k))) {
                Some(v) => Ok(Some(v.clone())),
                None => scoped.get(name, keys),
            }
        };
        let address = var(&HOST)?.unwrap_or_else(|| name.to_owned());
        if range::is_range(&address) {
            return Err(format!(
                "node {name}: ansible_host {address:?}: ranges expand only in host names; give each host its own ansible_host"
            ));
        }
        Ok(Node {
            name: name.to_owned(),
            address,
            role,
            port: var(&PORT)?.map(|p| port(name, &p)).transpose()?,
            user: var(&USER)?,
            identity: var(&KEY)?.map(|p| expand_tilde(&p)),
            advertise_address: var(&ADVERTISE)?,
        })
    }
}

fn port(what: &str, v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what}: ansible_port {v:?} is not a port number (1-65535)"))
}

/// Connection variables set on groups other than `all`, with each group's members resolved once.
struct ScopedVars<'a> {
    groups: Vec<(&'a str, &'a Vars, HashSet<&'a str>)>,
}

impl<'a> ScopedVars<'a> {
    fn new(a: &'a Ansible) -> ScopedVars<'a> {
        let mut groups: Vec<_> = a
            .groups
            .iter()
            .filter(|(name, g)| *name != "all" && !g.vars.is_empty())
            .map(|(name, g)| (name.as_str(), &g.vars, a.members(name).into_iter().collect()))
            .collect();
        groups.sort_by_key(|(name, ..)| *name);
        ScopedVars { groups }
    }

    /// The value the host's groups give the first of `keys` any of them sets; two groups that
    /// disagree are an error (Ansible would pick one by depth and name, silently).
    fn get(&self, host: &str, keys: &[&str]) -> Result<Option<String>, String> {
        for key in keys {
            let mut found: Option<(&str, &String)> = None;
            for (g, vars, members) in &self.groups {
                let Some(v) = vars.get(*key).filter(|_| members.contains(host)) else { continue };
                match found {
                    Some((g0, v0)) if v0 != v => {
                        return Err(format!(
                            "node {host}: groups {g0} and {g} set {key} differently ({v0:?}, {v:?}); set it on the host"
                        ))
                    }
                    _ => found = Some((g, v)),
                }
            }
            if let Some((_, v)) = found {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// INI

enum Section {
    Hosts(String),
    Children(String),
    Vars(String),
}

/// Parses an INI inventory; an error carries its line number.
pub(crate) fn parse_ini(text: &str) -> Result<Ansible, (usize, String)> {
    let mut a = Ansible::default();
    let mut section: Option<Section> = None;
    for (idx, raw) in text.lines().enumerate() {
        let lineno = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && !line.contains('=') {
            section = Some(parse_header(line).map_err(|m| (lineno, m))?);
            continue;
        }
        let Some(sec) = &section else {
            return Err((lineno, "a host line before any [group] header; put hosts under [all], [kube_control_plane] or [kube_node]".to_owned()));
        };
        ini_line(&mut a, sec, line).map_err(|m| (lineno, m))?;
    }
    Ok(a)
}

fn parse_header(line: &str) -> Result<Section, String> {
    let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
        return Err(format!("section header {line:?} has no closing ']'"));
    };
    let name = name.trim();
    let (group, kind) = name.rsplit_once(':').unwrap_or((name, ""));
    check_group_name(group)?;
    match kind {
        "" => Ok(Section::Hosts(group.to_owned())),
        "children" => Ok(Section::Children(group.to_owned())),
        "vars" => Ok(Section::Vars(group.to_owned())),
        other => Err(format!(
            "section [{name}]: unknown kind {other:?}; use [GROUP], [GROUP:children] or [GROUP:vars]"
        )),
    }
}

fn check_group_name(g: &str) -> Result<(), String> {
    if g.is_empty() || !g.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("group name {g:?}: use letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

fn ini_line(a: &mut Ansible, sec: &Section, line: &str) -> Result<(), String> {
    let words = split_ini_words(line)?;
    let Some((first, rest)) = words.split_first() else { return Ok(()) };
    match sec {
        Section::Hosts(group) => {
            if first.contains('=') {
                return Err(format!(
                    "{first:?}: a host line starts with the host name; write NAME key=value …"
                ));
            }
            a.add_hosts(group, first, &key_values(rest, first)?)
        }
        Section::Children(group) => {
            check_group_name(first)?;
            a.add_child(group, first);
            Ok(())
        }
        Section::Vars(group) => {
            for (k, v) in key_values(&words, &format!("[{group}:vars]"))? {
                a.set_group_var(group, &k, v);
            }
            Ok(())
        }
    }
}

fn key_values(words: &[String], what: &str) -> Result<Vars, String> {
    words
        .iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{what}: expected key=value, found {w:?}"))
        })
        .collect()
}

/// Splits an INI line into words, honouring Ansible's single and double quotes around values;
/// a `#` outside a word starts a comment.
fn split_ini_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote; close the quoted value".to_owned());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

// ---------------------------------------------------------------------------------------------
// YAML

/// How deep `children:` may nest (kubespray's own inventories nest two levels).
const MAX_DEPTH: usize = 16;

/// Parses a YAML inventory (`all: {hosts, children, vars}`, as kubespray's `hosts.yaml`).
pub(crate) fn parse_yaml(text: &str) -> Result<Ansible, String> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("{}; check the YAML syntax", one_line(&e.to_string())))?;
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => return Err("expected groups at the top level (all: hosts: …)".to_owned()),
    };
    let mut a = Ansible::default();
    for (k, v) in &top {
        let name = key_str(k, "top level")?;
        check_group_name(name)?;
        yaml_group(&mut a, name, v, name, 0)?;
    }
    Ok(a)
}

fn yaml_group(
    a: &mut Ansible,
    name: &str,
    v: &Value,
    at: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{at}: groups nest deeper than {MAX_DEPTH}; flatten the children"));
    }
    a.groups.entry(name.to_owned()).or_default();
    let Some(m) = mapping(v, at, "a group (hosts, children, vars)")? else { return Ok(()) };
    for (k, v) in m {
        match key_str(k, at)? {
            "hosts" => yaml_hosts(a, name, v, &format!("{at}.hosts"))?,
            "children" => {
                let at = format!("{at}.children");
                let Some(children) = mapping(v, &at, "a mapping of groups")? else { continue };
                for (ck, cv) in children {
                    let child = key_str(ck, &at)?;
                    check_group_name(child)?;
                    a.add_child(name, child);
                    yaml_group(a, child, cv, &format!("{at}.{child}"), depth + 1)?;
                }
            }
            "vars" => {
                for (vk, vv) in yaml_vars(v, &format!("{at}.vars"))? {
                    a.set_group_var(name, &vk, vv);
                }
            }
            other => {
                return Err(format!(
                    "{at}: unknown key {other:?}; a group has hosts, children and vars"
                ))
            }
        }
    }
    Ok(())
}

fn yaml_hosts(a: &mut Ansible, group: &str, v: &Value, at: &str) -> Result<(), String> {
    let Some(hosts) = mapping(v, at, "a mapping of host names (node1: …)")? else {
        return Ok(());
    };
    for (hk, hv) in hosts {
        let host = key_str(hk, at)?;
        let vars = yaml_vars(hv, &format!("{at}.{host}"))?;
        a.add_hosts(group, host, &vars).map_err(|m| format!("{at}: {m}"))?;
    }
    Ok(())
}

/// A mapping of variables; values hapki reads must be scalars, the rest may be anything.
fn yaml_vars(v: &Value, at: &str) -> Result<Vars, String> {
    let Some(m) = mapping(v, at, "a mapping of variables")? else { return Ok(Vars::new()) };
    let mut vars = Vars::new();
    for (k, v) in m {
        let key = key_str(k, at)?;
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ if !is_connection_var(key) => continue,
            _ => return Err(format!("{at}.{key}: expected a single value")),
        };
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

/// `v` as a mapping; `None` for an empty (null) value.
fn mapping<'v>(v: &'v Value, at: &str, what: &str) -> Result<Option<&'v Mapping>, String> {
    match v {
        Value::Mapping(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        _ => Err(format!("{at}: expected {what}")),
    }
}

fn key_str<'v>(k: &'v Value, at: &str) -> Result<&'v str, String> {
    k.as_str().ok_or_else(|| format!("{at}: a key that is not a name; quote it"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
