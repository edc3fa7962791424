//! Which CRIU this node accepts, and where it is.

use std::path::PathBuf;

use crate::sys::program::find_program;

/// Oldest CRIU that works here: 4.1 cannot dump inet sockets on kernels >= 6.16.
pub const MIN_CRIU: (u32, u32) = (4, 2);
/// CRIU lazy-pages needs pipes this large (`fs.pipe-max-size`).
pub const LAZY_PAGES_PIPE_SIZE: u64 = 4 * 1024 * 1024;

/// Parses "Version: 4.2.1" from `criu --version`.
pub fn parse_criu_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.lines().find_map(|l| l.trim().strip_prefix("Version:"))?.trim();
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse::<u32>().ok());
    Some((parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

/// Used by callers that just need the CRIU binary.
pub fn criu_path() -> Option<PathBuf> {
    find_program("criu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criu_versions() {
        assert_eq!(parse_criu_version("Version: 4.2.1\n"), Some((4, 2, 1)));
        assert_eq!(parse_criu_version("Version: 3.17\nGitID: x"), Some((3, 17, 0)));
        assert_eq!(parse_criu_version("garbage"), None);
    }
}
