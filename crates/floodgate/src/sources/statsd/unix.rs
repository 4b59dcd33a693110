//! StatsD on a Unix datagram socket (`[statsd] unix = ["/run/floodgate/statsd.sock"]`), the
//! DogStatsD clients' default in containers: one datagram a packet, as over UDP, read by the
//! same receive loop. Who may send is the socket file's mode and owner (`unix_mode`,
//! `unix_owner`, `unix_group`), set here right after binding.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::StatsdConfig;

/// Gives the socket file at `path` the configured mode, owner and group.
pub fn set_access(path: &Path, s: &StatsdConfig) -> Result<()> {
    let mode = u32::from_str_radix(s.unix_mode.trim_start_matches("0o"), 8)
        .with_context(|| format!("unix_mode `{}` is not an octal mode", s.unix_mode))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {:o}", mode))?;
    let uid = s.unix_owner.as_deref().map(|o| id_of(o, Path::new("/etc/passwd"))).transpose()?;
    let gid = s.unix_group.as_deref().map(|g| id_of(g, Path::new("/etc/group"))).transpose()?;
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
