//! What a failed boot leaves behind: the stage reached, the DHCP/TFTP/HTTP exchange
//! seen for the VM's MAC, and the tail of its serial console.
use std::{fmt, time::Duration};

/// A boot that did not reach its heartbeat.
pub struct Failure {
    pub scenario: &'static str,
    /// The last stage seen (see [`super::lab::Stage`]).
    pub stage: String,
    pub why: String,
    pub after: Duration,
    /// DHCP and TFTP lines of the DHCP/TFTP server's log for this VM.
    pub dhcp_tftp: Vec<String>,
    /// gb10-provision's `/clients/<mac>` record (HTTP fetches, heartbeats).
    pub client: String,
    pub serial_tail: Vec<String>,
}

impl Failure {
    /// A failure before or outside the boot (setup), with nothing seen yet.
    pub fn early(scenario: &'static str, stage: &str, why: String) -> Box<Self> {
        Box::new(Self {
            scenario,
            stage: stage.into(),
            why,
            after: Duration::ZERO,
            dhcp_tftp: Vec::new(),
            client: String::new(),
            serial_tail: Vec::new(),
        })
    }
}

/// The last `n` lines of `log` that `keep` accepts, oldest first.
pub fn last_lines(log: &str, n: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut v: Vec<String> = log.lines().filter(|l| keep(l)).map(str::to_owned).collect();
    v.drain(..v.len().saturating_sub(n));
    v
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "e2e FAILED {}: {} after {:.1} s; stage reached: {}",
            self.scenario,
            self.why,
            self.after.as_secs_f64(),
            self.stage
        )?;
        writeln!(f, "--- DHCP/TFTP exchange for this VM ---")?;
        for l in &self.dhcp_tftp {
            writeln!(f, "  {l}")?;
        }
        writeln!(
            f,
            "--- gb10-provision /clients/<mac> ---\n  {}",
            self.client
        )?;
        writeln!(f, "--- serial console (tail) ---")?;
        for l in &self.serial_tail {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// The last `n` non-empty lines of `text`, control characters stripped (firmware
/// consoles draw with escape sequences).
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let clean: Vec<String> = text
        .split(['\n', '\r'])
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .replace("[0m", "")
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    clean[clean.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_strips_console_escapes_and_keeps_the_last_lines() {
        let text = "a\r\n\x1b[0mb\n\n  \nc\rd\n";
        assert_eq!(tail(text, 2), ["c", "d"]);
        assert_eq!(tail(text, 10), ["a", "b", "c", "d"]);
    }

    #[test]
    fn ci_scenarios_exist() {
        for name in super::super::CI {
            assert!(super::super::scenario::find(name).is_some(), "{name}");
        }
    }
}
