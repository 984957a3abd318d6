//! `conductor flags`: the shared flags (incidents, policy, candidate).

use anyhow::Result;
use conductor::{db::Db, scheduling::flags};

use super::{args::FlagsCmd, render};

/// `conductor flags`: show the flags, or set one.
pub async fn run(
    db: &Db,
    settings: &flags::Settings,
    action: Option<FlagsCmd>,
    json: bool,
) -> Result<()> {
    match action {
        None => {
            let stored = flags::read(db).await?;
            let (resolved, warnings) = match settings.check(&stored) {
                Ok(ok) => ok,
                Err(e) => (settings.resolve(&stored)?, vec![format!("REFUSED: {e}")]),
            };
            let policies: Vec<_> = settings
                .catalog
                .named()
                .map(|(name, spec)| serde_json::json!({"name": name, "spec": spec.to_string()}))
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "resolved": resolved, "stored": stored, "policies": policies, "warnings": warnings
                    }))?
                );
                return Ok(());
            }
            print!("{}", render::resolved(&resolved));
            for name in flags::NAMES {
                if let Some(s) = stored.get(*name) {
                    println!(
                        "  database {name} = {} (set {} by {})",
                        s.value,
                        conductor::scheduling::domain::format_ms(s.updated_ms),
                        s.updated_by
                    );
                }
            }
            println!("policies:");
            for (name, spec) in settings.catalog.named() {
                println!("  {name:<16} {spec}");
            }
            for w in warnings {
                println!("warning: {w}");
            }
        }
        Some(FlagsCmd::Set { pairs, by }) => {
            let by =
                by.unwrap_or_else(|| format!("cli:{}", conductor::observe::replicas::whoami()));
            let (changes, warnings) = flags::set_many(db, settings, &pairs, &by).await?;
            for (name, value) in &pairs {
                match changes.iter().find(|c| &c.name == name) {
                    Some(c) => println!(
                        "{name}: {} -> {}",
                        c.old_value.as_deref().unwrap_or("(unset)"),
                        c.new_value
                    ),
                    None => println!("{name}: already {value}"),
                }
            }
            if changes
                .iter()
                .any(|c| c.name == flags::CANDIDATE && c.new_value != flags::NONE)
            {
                println!("the candidate starts from empty shadow state");
            }
            for w in warnings {
                println!("warning: {w}");
            }
        }
        Some(FlagsCmd::History { n }) => {
            let changes = flags::history(db, n).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
                return Ok(());
            }
            for c in changes {
                println!(
                    "{}  {:<10} {} -> {}  by {}",
                    conductor::scheduling::domain::format_ms(c.changed_ms),
                    c.name,
                    c.old_value.as_deref().unwrap_or("(unset)"),
                    c.new_value,
                    c.changed_by
                );
            }
        }
    }
    Ok(())
}
