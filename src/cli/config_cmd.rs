//! `conductor config`: check a configuration, or show each value and where it came from.

use anyhow::{bail, Result};
use conductor::config::{check::Finding, Config};

use super::args::{ConfigArg, ConfigCmd};

/// `conductor config check|show`.
pub fn run(arg: &ConfigArg, action: ConfigCmd) -> Result<()> {
    match action {
        ConfigCmd::Check { json } => {
            let shown = if arg.path.exists() {
                arg.path.display().to_string()
            } else {
                format!("defaults ({} not found)", arg.path.display())
            };
            let config = match arg.load() {
                Ok(c) => c,
                Err(e) => {
                    println!("Checking {shown}\n  FAILED: {e:#}");
                    bail!("configuration check failed");
                }
            };
            let mut findings = conductor::config::check::check(&config, true);
            // The flag overrides are the scheduling's to judge (they name its policies).
            findings.push(Finding::new(
                "flags",
                conductor::scheduling::flags::Overrides::from_config(config.flag_config())
                    .map(|_| "the overrides name known values and policies".to_owned())
                    .map_err(|e| e.to_string()),
            ));
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                println!("Checking {shown}");
                for f in &findings {
                    let verdict = if f.ok { "SUCCESS" } else { "FAILED" };
                    println!("  {verdict:<7} {}: {}", f.subject, f.detail);
                }
            }
            let failed = findings.iter().filter(|f| !f.ok).count();
            if failed > 0 {
                bail!("configuration check failed: {failed} problem(s)");
            }
        }
        ConfigCmd::Show { json } => {
            let rows = Config::explain(&arg.path, arg.explicit())?;
            if json {
                let doc: Vec<_> = rows
                    .iter()
                    .map(|(key, value, origin)| {
                        serde_json::json!({"key": key, "value": value, "origin": origin})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(());
            }
            let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
            for (key, value, origin) in rows {
                println!("{key:<width$} = {value}    # {origin}");
            }
        }
    }
    Ok(())
}
