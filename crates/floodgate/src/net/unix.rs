//! Unix socket files: who may send to one is its mode and owner (`unix_mode`, `unix_owner`,
//! `unix_group` in `[statsd]` and `[syslog]`), set right after binding.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Who may use a socket file: its mode (octal text), owner and group (names or numbers).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// `"0622"`.
    pub mode: &'a str,
    /// Unchanged when `None`.
    pub owner: Option<&'a str>,
    /// Unchanged when `None`.
    pub group: Option<&'a str>,
}

/// Whether `mode` is an octal file mode (`"0660"`, `"0o660"`).
pub fn valid_mode(mode: &str) -> bool {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8).is_ok_and(|m| m <= 0o7777)
}

/// Gives the socket file at `path` the configured mode, owner and group.
pub fn set_access(path: &Path, access: Access<'_>) -> Result<()> {
    let mode = u32::from_str_radix(access.mode.trim_start_matches("0o"), 8)
        .with_context(|| format!("unix_mode `{}` is not an octal mode", access.mode))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {:o}", mode))?;
    let uid = access.owner.map(|o| id_of(o, Path::new("/etc/passwd"))).transpose()?;
    let gid = access.group.map(|g| id_of(g, Path::new("/etc/group"))).transpose()?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).context("cannot change the owner")?;
    }
    Ok(())
}

/// A user or group as a number: given as one, or looked up by name in `database` (`name:x:id:...`
/// lines: /etc/passwd, /etc/group).
fn id_of(name: &str, database: &Path) -> Result<u32> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(database).with_context(|| format!("cannot read {}", database.display()))?;
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() == Some(name) {
            if let Some(id) = fields.nth(1).and_then(|f| f.parse().ok()) {
                return Ok(id);
            }
        }
    }
    bail!("no `{name}` in {}", database.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passwd");
        std::fs::write(&db, "root:x:0:0::/root:/bin/sh\nfloodgate:x:998:998::/:/usr/sbin/nologin\n").unwrap();
        assert_eq!(id_of("floodgate", &db).unwrap(), 998);
        assert_eq!(id_of("1234", &db).unwrap(), 1234);
        assert!(id_of("nobody-here", &db).unwrap_err().to_string().contains("no `nobody-here`"));
    }
}
