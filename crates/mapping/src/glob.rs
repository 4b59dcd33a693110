//! Glob rules as statsd_exporter reads them: a name split at `.`, each field a literal or `*`
//! (which captures the whole field); and its templates, where `$N` / `${N}` is capture N.

/// One field of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Must equal the name's field.
    Literal(String),
    /// Any field (captured).
    Star,
}

/// A parsed glob.
#[derive(Debug, Clone)]
pub struct Glob {
    /// Its fields.
    pub fields: Vec<Field>,
}

impl Glob {
    /// Parses `pattern` under statsd_exporter's rule for globs: fields separated by `.`, each
    /// `*` or a literal of letters, digits, `_` and `-`; the first literal may not start with a
    /// digit or a dash, later ones may start with a digit (statsd_exporter issue 328). One field
    /// is a glob too (`*` matches every name without a dot).
    pub fn parse(pattern: &str) -> Option<Glob> {
        let fields = pattern
            .split('.')
            .enumerate()
            .map(|(i, p)| match p {
                "*" => Some(Field::Star),
                p if valid_literal(p, i == 0) => Some(Field::Literal(p.to_string())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Glob { fields })
    }

    /// The captures when `name` (already split) matches.
    pub fn captures<'n>(&self, name: &[&'n str]) -> Option<Vec<&'n str>> {
        if name.len() != self.fields.len() {
            return None;
        }
        let mut caps = Vec::new();
        for (f, n) in self.fields.iter().zip(name) {
            match f {
                Field::Star => caps.push(*n),
                Field::Literal(l) if l == n => {}
                Field::Literal(_) => return None,
            }
        }
        Some(caps)
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_-]*` for the first field, `[a-zA-Z0-9_][a-zA-Z0-9_-]*` for the others.
fn valid_literal(s: &str, first: bool) -> bool {
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    match s.as_bytes() {
        [head, rest @ ..] => {
            (if first { head.is_ascii_alphabetic() || *head == b'_' } else { word(head) })
                && rest.iter().all(|c| word(c) || *c == b'-')
        }
        [] => false,
    }
}

/// Expands a glob rule's template: `$N` or `${N}` (the longest run of `[a-zA-Z0-9_$]` after
/// the `$`, braces optional) becomes capture N (from 1), `$0` the whole name; anything else so
/// written, or a capture that does not exist, becomes nothing — as statsd_exporter's glob
/// formatter does.
pub fn expand(template: &str, whole: &str, captures: &[&str], out: &mut String) {
    let b = template.as_bytes();
    let mut i = 0;
    let mut literal_from = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let braced = b.get(j) == Some(&b'{');
        if braced {
            j += 1;
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$') {
            j += 1;
        }
        if j == start {
            // A lone `$`: kept.
            i += 1;
            continue;
        }
        let reference = &template[start..j];
        if b.get(j) == Some(&b'}') {
            j += 1;
        }
        out.push_str(&template[literal_from..i]);
        match reference.parse::<usize>() {
            Ok(0) => out.push_str(whole),
            Ok(n) if n <= captures.len() => out.push_str(captures[n - 1]),
            _ => {}
        }
        i = j;
        literal_from = j;
    }
    out.push_str(&template[literal_from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_statsd_exporter_accepts_them() {
        for ok in [
            "a1.b2",
            "client.*.request.count",
            "*.*",
            "my-app.x_y.*",
            "_x.y",
            "*",
            "single",
            "test.99.myapp.*",
            "test.99test.myapp.*",
            "foo--bar.*",
            "a.b-",
            "kafka.server.brokerPort.9092.clientId.ReplicaFetcherThread-0-1.*",
        ] {
            assert!(Glob::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "a..b", "a.-b", "a.b*c", "1a.b", "-a.b", "a.b c", "a.b/c", "a.", ".a"] {
            assert!(Glob::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn captures_are_whole_fields() {
        let g = Glob::parse("client.*.request.*").unwrap();
        let name: Vec<&str> = "client.aaa.request.count".split('.').collect();
        assert_eq!(g.captures(&name), Some(vec!["aaa", "count"]));
        let short: Vec<&str> = "client.aaa.request".split('.').collect();
        assert_eq!(g.captures(&short), None);
    }

    #[test]
    fn templates_expand_like_the_glob_formatter() {
        let caps = ["a", "b"];
        let x = |t: &str| {
            let mut s = String::new();
            expand(t, "w.a.b", &caps, &mut s);
            s
        };
        assert_eq!(x("name_$1_x"), "name_");
        assert_eq!(x("name_${1}_x_${2}"), "name_a_x_b");
        assert_eq!(x("$2"), "b");
        assert_eq!(x("$3x"), "", "an unknown reference is nothing");
        assert_eq!(x("plain"), "plain");
        assert_eq!(x("cost $"), "cost $");
        assert_eq!(x("all_$0"), "all_w.a.b", "$0 is the whole name");
    }
}
