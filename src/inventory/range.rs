//! Ansible host ranges: `node[1:3]`, `node[01:03]` (zero-padded), `10.0.0.[11:13]`,
//! `node[a:c]`, `node[0:10:5]` (a stride), several in one pattern (`rack[1:2]-n[1:2]`).
//!
//! Semantics follow Ansible's `expand_hostname_range`: an empty start is 0; a zero-padded start
//! fixes the width and needs an end of the same width; letters expand one by one. Unlike
//! Ansible, a start after the end is an error rather than no hosts at all, and the number of
//! hosts a pattern names is computed before anything is expanded, so a hostile range costs
//! nothing.

/// One `[start:end(:stride)]` part of a pattern.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Numbers { start: u64, end: u64, stride: u64, width: usize },
    Letters { start: u8, end: u8, stride: u64 },
}

impl Part {
    /// How many values this part takes; `None` past `u64`.
    fn count(&self) -> Option<u64> {
        match *self {
            Part::Literal(_) => Some(1),
            Part::Numbers { start, end, stride, .. } => ((end - start) / stride).checked_add(1),
            Part::Letters { start, end, stride } => Some(u64::from(end - start) / stride + 1),
        }
    }

    fn values(&self) -> Vec<String> {
        match self {
            Part::Literal(s) => vec![s.clone()],
            Part::Numbers { start, end, stride, width } => (*start..=*end)
                .step_by(usize::try_from(*stride).unwrap_or(usize::MAX))
                .map(|n| format!("{n:0width$}"))
                .collect(),
            Part::Letters { start, end, stride } => (*start..=*end)
                .step_by(usize::try_from(*stride).unwrap_or(usize::MAX))
                .map(|c| char::from(c).to_string())
                .collect(),
        }
    }
}

/// Whether `pattern` holds a range at all.
pub(crate) fn is_range(pattern: &str) -> bool {
    pattern.contains('[') || pattern.contains(']')
}

/// Expands `pattern` into host names, refusing a pattern that names more than `max` hosts.
/// Errors are one line and name the fix.
pub(crate) fn expand(pattern: &str, max: usize) -> Result<Vec<String>, String> {
    let parts = parse(pattern)?;
    let count = parts
        .iter()
        .try_fold(1u64, |acc, p| acc.checked_mul(p.count()?))
        .filter(|c| *c <= max as u64)
        .ok_or_else(|| {
            format!("host range {pattern:?} names more than {max} hosts; list fewer hosts")
        })?;
    let mut names = vec![String::new()];
    for part in &parts {
        let values = part.values();
        names = names
            .iter()
            .flat_map(|prefix| values.iter().map(move |v| format!("{prefix}{v}")))
            .collect();
    }
    debug_assert_eq!(names.len() as u64, count);
    Ok(names)
}

fn parse(pattern: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find(['[', ']']) {
        if rest.as_bytes()[open] == b']' {
            return Err(format!("host range {pattern:?} has ']' without '['; write name[1:3]"));
        }
        let close = rest[open..].find(']').map(|c| open + c).ok_or_else(|| {
            format!("host range {pattern:?} has '[' without ']'; write name[1:3]")
        })?;
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        parts.push(parse_bounds(&rest[open + 1..close], pattern)?);
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// `start:end` or `start:end:stride`, numbers or single letters.
fn parse_bounds(inner: &str, pattern: &str) -> Result<Part, String> {
    let bad = |why: &str| format!("host range {pattern:?}: {why}; write [1:3], [01:03] or [a:c]");
    let fields: Vec<&str> = inner.split(':').collect();
    let (start, end, stride) = match fields[..] {
        [s, e] => (s, e, "1"),
        [s, e, st] => (s, e, st),
        _ => return Err(bad("expected start:end or start:end:stride")),
    };
    let stride: u64 = stride
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| bad("the stride must be a number above 0"))?;
    if end.is_empty() {
        return Err(bad("no end value"));
    }
    let start = if start.is_empty() { "0" } else { start };
    if let (Some(s), Some(e)) = (single_letter(start), single_letter(end)) {
        if s > e {
            return Err(bad("the start comes after the end"));
        }
        return Ok(Part::Letters { start: s, end: e, stride });
    }
    let number = |s: &str| {
        if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    let (Some(s), Some(e)) = (number(start), number(end)) else {
        return Err(bad("the bounds must be numbers or single letters"));
    };
    let width = if start.len() > 1 && start.starts_with('0') {
        if start.len() != end.len() {
            return Err(bad("a zero-padded start needs an end of the same width"));
        }
        start.len()
    } else {
        0
    };
    if s > e {
        return Err(bad("the start comes after the end"));
    }
    Ok(Part::Numbers { start: s, end: e, stride, width })
}

fn single_letter(s: &str) -> Option<u8> {
    match s.as_bytes() {
        [c] if c.is_ascii_alphabetic() => Some(*c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> Vec<String> {
        expand(p, 5000).unwrap()
    }

    #[test]
    fn ranges_expand_as_ansible_does() {
        assert_eq!(ok("node[1:3]"), ["node1", "node2", "node3"]);
        assert_eq!(ok("node[01:03]"), ["node01", "node02", "node03"]);
        assert_eq!(ok("node[8:10]"), ["node8", "node9", "node10"]);
        assert_eq!(ok("node[08:10]"), ["node08", "node09", "node10"]);
        assert_eq!(ok("10.0.0.[11:13]"), ["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
        assert_eq!(ok("db-[a:c].x"), ["db-a.x", "db-b.x", "db-c.x"]);
        assert_eq!(ok("n[0:10:5]"), ["n0", "n5", "n10"]);
        assert_eq!(ok("n[:2]"), ["n0", "n1", "n2"]);
        assert_eq!(ok("r[1:2]-n[1:2]"), ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]);
        assert_eq!(ok("plain"), ["plain"]);
    }

    #[test]
    fn hostile_ranges_are_one_line_errors_and_cost_nothing() {
        for (bad, needle) in [
            ("node[1:1000000]", "more than 5000 hosts"),
            ("n[1:100][1:100]", "more than 5000 hosts"),
            ("n[0:18446744073709551615]", "more than 5000 hosts"),
            ("n[0:99999999999999999999999]", "numbers or single letters"),
            ("n[1:3", "'[' without ']'"),
            ("n1:3]", "']' without '['"),
            ("n[3:1]", "start comes after the end"),
            ("n[c:a]", "start comes after the end"),
            ("n[1:3:0]", "stride"),
            ("n[1:3:x]", "stride"),
            ("n[1:]", "no end value"),
            ("n[1]", "start:end"),
            ("n[1:2:3:4]", "start:end"),
            ("n[01:3]", "same width"),
            ("n[x1:3]", "numbers or single letters"),
            ("n[-1:3]", "numbers or single letters"),
        ] {
            let e = expand(bad, 5000).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert_eq!(expand("n[1:5000]", 5000).unwrap().len(), 5000);
    }
}
