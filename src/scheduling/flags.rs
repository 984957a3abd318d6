//! Flags (docs/design.md §8): switches every replica reads from the database, so all agree.
//!
//! - `incidents = off | shadow | on`: off stores alarms and ignores them; shadow decides them
//!   and records incidents and decisions but starts no agent; on starts agents.
//! - `policy = NAME`: the authoritative scheduling policy (default `default`).
//! - `candidate = NAME | none`: a policy evaluated in shadow beside it ([`crate::scheduling::shadow`]).
//!
//! A NAME is `default`, a `[policies.NAME]` of the configuration, or an inline spec such as
//! `window=30m` (see [`crate::scheduling::policy::PolicySpec`]).
//!
//! Precedence, highest first: a replica's `[flags]` configuration (pins the flag on that
//! replica), the database (`conductor flags set`, shared by all), the built-in default
//! (`incidents = on`, `policy = default`, `candidate = none`). The flags are read in every
//! decision's own transaction, so a change made on one replica applies to the next message
//! decided on any. Every change is recorded in `flag_changes` (who, when, old, new).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    db::{now_ms, Db, Tx},
    error::Error,
    scheduling::policy::{Policy, PolicySpec, DEFAULT_POLICY},
    with_conn, with_pool,
};

pub const INCIDENTS: &str = "incidents";
pub const POLICY: &str = "policy";
pub const CANDIDATE: &str = "candidate";
/// The flags `conductor flags` shows and sets (the shutdown gate has its own commands).
pub const NAMES: &[&str] = &[INCIDENTS, POLICY, CANDIDATE];
/// The value of `candidate` that evaluates nothing.
pub const NONE: &str = "none";

/// What happens to alarms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Incidents {
    /// Alarms are stored and ignored.
    Off,
    /// Alarms are decided and recorded; no agent is started.
    Shadow,
    /// Alarms are decided and incidents get agents.
    On,
}

impl Incidents {
    pub fn parse(text: &str) -> Result<Incidents, Error> {
        match text.trim() {
            "off" => Ok(Incidents::Off),
            "shadow" => Ok(Incidents::Shadow),
            "on" => Ok(Incidents::On),
            other => Err(Error::Config(format!(
                "incidents must be off, shadow or on, not {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Incidents::Off => "off",
            Incidents::Shadow => "shadow",
            Incidents::On => "on",
        }
    }
}

/// Where a resolved flag's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Database,
    Default,
}

/// A flag as stored in the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub value: String,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// The database's flags, by name.
pub type StoredFlags = HashMap<String, Stored>;

const READ: &str = "SELECT name, value, updated_ms, updated_by FROM flags
    WHERE name IN ('incidents', 'policy', 'candidate')";

fn to_map(rows: Vec<(String, String, i64, String)>) -> StoredFlags {
    rows.into_iter()
        .map(|(name, value, updated_ms, updated_by)| {
            (
                name,
                Stored {
                    value,
                    updated_ms,
                    updated_by,
                },
            )
        })
        .collect()
}

/// The flags as stored, read in the caller's transaction (a decision reads them there).
pub async fn read_tx(tx: &mut Tx) -> Result<StoredFlags, Error> {
    let rows = with_conn!(tx, |c| sqlx::query_as(READ).fetch_all(c).await?);
    Ok(to_map(rows))
}

pub async fn read(db: &Db) -> Result<StoredFlags, Error> {
    let rows = with_pool!(db, |p| sqlx::query_as(READ).fetch_all(p).await?);
    Ok(to_map(rows))
}

/// One recorded change of a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub name: String,
    pub old_value: Option<String>,
    pub new_value: String,
    pub changed_ms: i64,
    pub changed_by: String,
}

/// Writes a flag and records the change, in `tx`. Returns None when the flag already had
/// this value (nothing written). Callers validate the value.
pub async fn write(
    tx: &mut Tx,
    name: &str,
    value: &str,
    by: &str,
    ms: i64,
) -> Result<Option<Change>, Error> {
    // Postgres: lock the row so two concurrent writers record each other's value as the old
    // one. SQLite's writer is already alone (BEGIN IMMEDIATE).
    const OLD_PG: &str = "SELECT value FROM flags WHERE name = $1 FOR UPDATE";
    const OLD_SQLITE: &str = "SELECT value FROM flags WHERE name = $1";
    const UPSERT: &str =
        "INSERT INTO flags (name, value, updated_ms, updated_by) VALUES ($1, $2, $3, $4)
        ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms,
            updated_by = excluded.updated_by";
    const RECORD: &str =
        "INSERT INTO flag_changes (name, old_value, new_value, changed_ms, changed_by)
        VALUES ($1, $2, $3, $4, $5)";
    let old: Option<String> = match tx {
        Tx::Postgres(t) => {
            sqlx::query_scalar(OLD_PG)
                .bind(name)
                .fetch_optional(&mut **t)
                .await?
        }
        Tx::Sqlite(t) => {
            sqlx::query_scalar(OLD_SQLITE)
                .bind(name)
                .fetch_optional(&mut **t)
                .await?
        }
    };
    if old.as_deref() == Some(value) {
        return Ok(None);
    }
    with_conn!(tx, |c| {
        sqlx::query(UPSERT)
            .bind(name)
            .bind(value)
            .bind(ms)
            .bind(by)
            .execute(&mut *c)
            .await?;
        sqlx::query(RECORD)
            .bind(name)
            .bind(old.as_deref())
            .bind(value)
            .bind(ms)
            .bind(by)
            .execute(&mut *c)
            .await?;
    });
    Ok(Some(Change {
        name: name.to_owned(),
        old_value: old,
        new_value: value.to_owned(),
        changed_ms: ms,
        changed_by: by.to_owned(),
    }))
}

/// The latest recorded changes, newest first.
pub async fn history(db: &Db, limit: i64) -> Result<Vec<Change>, Error> {
    const SQL: &str = "SELECT name, old_value, new_value, changed_ms, changed_by FROM flag_changes
        ORDER BY id DESC LIMIT $1";
    let rows: Vec<(String, Option<String>, String, i64, String)> =
        with_pool!(db, |p| sqlx::query_as(SQL).bind(limit).fetch_all(p).await?);
    Ok(rows
        .into_iter()
        .map(
            |(name, old_value, new_value, changed_ms, changed_by)| Change {
                name,
                old_value,
                new_value,
                changed_ms,
                changed_by,
            },
        )
        .collect())
}

/// The configuration's part in the flags (`Config::flag_config`): its `[flags]` overrides,
/// its named `[policies]` and `[shadow]`. The sections' types live here, with their meaning.
#[derive(Debug, Clone, Copy)]
pub struct FlagConfig<'a> {
    pub flags: &'a FlagOverrides,
    pub policies: &'a BTreeMap<String, PolicySpec>,
    pub shadow: &'a ShadowConfig,
}

/// `[shadow]`: how a candidate policy is evaluated beside the real decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// The longest one statement of a candidate's evaluation may run on Postgres, a lock wait
    /// included. Past it the evaluation is abandoned and recorded as `ERROR`, and the real
    /// decision commits without it: a stuck candidate delays a decision by this much at most.
    #[serde(with = "crate::duration::required")]
    pub timeout: Duration,
}

/// `shadow.timeout` unless configured: far above a healthy evaluation (well under a
/// millisecond a statement), short enough that a candidate stuck on a lock costs a decision
/// a quarter of a second, not the worker's lease.
pub const DEFAULT_SHADOW_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            timeout: DEFAULT_SHADOW_TIMEOUT,
        }
    }
}

/// `[flags]`: values that override the shared flags on this replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FlagOverrides {
    /// `off`, `shadow` or `on`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incidents: Option<String>,
    /// The authoritative policy: a name from `[policies]`, `default`, or an inline spec.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The candidate evaluated in shadow: a policy as above, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
}

/// The policies a flag can name: the built-in `default` and the configuration's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    named: BTreeMap<String, PolicySpec>,
}

impl Catalog {
    pub fn from_config(config: FlagConfig<'_>) -> Catalog {
        let mut named = config.policies.clone();
        named.entry(DEFAULT_POLICY.to_owned()).or_default();
        Catalog { named }
    }

    /// The policy a flag value names: a configured name, or an inline spec.
    pub fn resolve(&self, value: &str) -> Result<Policy, Error> {
        let value = value.trim();
        if let Some(spec) = self.named.get(value) {
            return Ok(Policy::named(value, spec.clone()));
        }
        if value.contains('=') || value.starts_with("tickets") {
            return Ok(Policy::inline(PolicySpec::parse(value)?));
        }
        Err(Error::Config(format!(
            "no policy named {value:?} (defined: {}; or write an inline spec such as window=30m)",
            self.named.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }

    pub fn named(&self) -> impl Iterator<Item = (&String, &PolicySpec)> {
        self.named.iter()
    }
}

/// `[flags]` of the configuration, parsed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Overrides {
    pub incidents: Option<Incidents>,
    pub policy: Option<String>,
    /// `Some(None)` pins "no candidate".
    pub candidate: Option<Option<String>>,
}

impl Overrides {
    /// Parses and checks `[flags]` against the configuration's policies.
    pub fn from_config(config: FlagConfig<'_>) -> Result<Overrides, Error> {
        let catalog = Catalog::from_config(config);
        let f = config.flags;
        let incidents = f
            .incidents
            .as_deref()
            .map(Incidents::parse)
            .transpose()
            .map_err(|e| match e {
                Error::Config(why) => Error::Config(format!("flags.{why}")),
                other => other,
            })?;
        if let Some(p) = &f.policy {
            catalog
                .resolve(p)
                .map_err(|e| Error::Config(format!("flags.policy: {e}")))?;
        }
        let candidate = f
            .candidate
            .as_deref()
            .map(|c| (c.trim() != NONE).then(|| c.trim().to_owned()));
        if let Some(Some(c)) = &candidate {
            catalog
                .resolve(c)
                .map_err(|e| Error::Config(format!("flags.candidate: {e}")))?;
        }
        Ok(Overrides {
            incidents,
            policy: f.policy.clone(),
            candidate,
        })
    }
}

/// One flag's value with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Value<T> {
    pub value: T,
    pub source: Source,
}

/// The flags as a replica sees them: its overrides over the database over the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub incidents: Value<Incidents>,
    pub policy: Value<String>,
    pub candidate: Value<Option<String>>,
}

/// What one decision runs with.
#[derive(Debug, Clone)]
pub struct Scheduling {
    pub policy: Policy,
    pub incidents: Incidents,
    /// The candidate to evaluate in shadow; `Err` names why it cannot be (recorded as the
    /// evaluation's error, never failing the real decision).
    pub candidate: Option<Result<Policy, String>>,
    /// The longest one statement of the candidate's evaluation may take on Postgres before
    /// the evaluation is recorded as `ERROR` (`shadow.timeout`).
    pub candidate_timeout: Duration,
}

impl Scheduling {
    /// The authoritative policy alone, incidents on, no candidate (a plain replay).
    pub fn only(policy: Policy) -> Scheduling {
        Scheduling {
            policy,
            incidents: Incidents::On,
            candidate: None,
            candidate_timeout: DEFAULT_SHADOW_TIMEOUT,
        }
    }
}

/// A replica's flag settings: its configuration's overrides and policies.
#[derive(Debug, Clone)]
pub struct Settings {
    pub overrides: Overrides,
    pub catalog: Catalog,
    /// `shadow.timeout`: see [`Scheduling::candidate_timeout`].
    pub candidate_timeout: Duration,
}

impl Settings {
    pub fn from_config(config: FlagConfig<'_>) -> Result<Settings, Error> {
        Ok(Settings {
            overrides: Overrides::from_config(config)?,
            catalog: Catalog::from_config(config),
            candidate_timeout: config.shadow.timeout,
        })
    }

    /// Resolves the flags; a value in the database that is not a valid value at all (written
    /// by hand) is an error naming it.
    pub fn resolve(&self, stored: &StoredFlags) -> Result<Resolved, Error> {
        let db = |name: &str| stored.get(name).map(|s| s.value.trim().to_owned());
        let incidents = match (self.overrides.incidents, db(INCIDENTS)) {
            (Some(v), _) => Value {
                value: v,
                source: Source::Config,
            },
            (None, Some(v)) => Value {
                value: Incidents::parse(&v)
                    .map_err(|e| Error::Mismatch(format!("the database's flag incidents: {e}")))?,
                source: Source::Database,
            },
            (None, None) => Value {
                value: Incidents::On,
                source: Source::Default,
            },
        };
        let policy = match (&self.overrides.policy, db(POLICY)) {
            (Some(v), _) => Value {
                value: v.clone(),
                source: Source::Config,
            },
            (None, Some(v)) => Value {
                value: v,
                source: Source::Database,
            },
            (None, None) => Value {
                value: DEFAULT_POLICY.to_owned(),
                source: Source::Default,
            },
        };
        let candidate = match (&self.overrides.candidate, db(CANDIDATE)) {
            (Some(v), _) => Value {
                value: v.clone(),
                source: Source::Config,
            },
            (None, Some(v)) => Value {
                value: (v != NONE).then_some(v),
                source: Source::Database,
            },
            (None, None) => Value {
                value: None,
                source: Source::Default,
            },
        };
        Ok(Resolved {
            incidents,
            policy,
            candidate,
        })
    }

    /// What a decision runs with under `stored`. An authoritative policy this replica cannot
    /// resolve (another replica's configuration names it) is a retryable mismatch: the
    /// message waits, stored, until the flag or this configuration is fixed.
    pub fn scheduling(&self, stored: &StoredFlags) -> Result<Scheduling, Error> {
        let r = self.resolve(stored)?;
        let policy = self.catalog.resolve(&r.policy.value).map_err(|e| {
            Error::Mismatch(format!(
                "the authoritative policy flag ({} value): {e}",
                source_word(r.policy.source)
            ))
        })?;
        let candidate = r.candidate.value.as_deref().map(|c| {
            self.catalog
                .resolve(c)
                .map_err(|e| format!("candidate: {e}"))
        });
        Ok(Scheduling {
            policy,
            incidents: r.incidents.value,
            candidate,
            candidate_timeout: self.candidate_timeout,
        })
    }

    /// Resolves `stored` and checks the result for contradictions: an error for what must
    /// not run (an unknown policy, a candidate that is the authoritative policy itself),
    /// warnings for what is harmless but probably not meant.
    pub fn check(&self, stored: &StoredFlags) -> Result<(Resolved, Vec<String>), Error> {
        let r = self.resolve(stored)?;
        let policy = self
            .catalog
            .resolve(&r.policy.value)
            .map_err(|e| Error::Config(format!("flag policy: {e}")))?;
        let mut warnings = Vec::new();
        let candidate = match &r.candidate.value {
            None => None,
            Some(c) => match self.catalog.resolve(c) {
                Ok(candidate) => Some(candidate),
                // A candidate set in the database that this replica's configuration does not
                // define (a rolling deploy that renamed it) costs nothing real: its
                // evaluations are recorded as ERROR. Only this replica's own pin is refused.
                Err(e) if r.candidate.source == Source::Database => {
                    warnings.push(format!(
                        "flag candidate: {e}; its evaluations are recorded as ERROR until \
                         this replica's configuration defines it"
                    ));
                    None
                }
                Err(e) => return Err(Error::Config(format!("flag candidate: {e}"))),
            },
        };
        if let Some(candidate) = candidate {
            if candidate.name == policy.name {
                return Err(Error::Config(format!(
                    "flag candidate names the authoritative policy {:?} itself: it would only \
                     ever agree with itself; set candidate = none or another policy",
                    policy.name
                )));
            }
            if candidate.spec.behaves_like(&policy.spec) {
                warnings.push(format!(
                    "candidate {:?} has the same settings as the authoritative policy {:?} \
                     ({}): expect 100% AGREE",
                    candidate.name, policy.name, policy.spec
                ));
            }
            if r.incidents.value == Incidents::Off && candidate.handles_alarms() {
                warnings.push(format!(
                    "incidents = off while candidate {:?} decides alarms: every alarm it would \
                     spawn for shows as AUTHORITATIVE_EMPTY",
                    candidate.name
                ));
            }
        }
        if !policy.handles_alarms() && r.incidents.value != Incidents::Off {
            warnings.push(format!(
                "incidents = {} but the authoritative policy {:?} decides tickets only: alarms \
                 are ignored all the same",
                r.incidents.value.as_str(),
                policy.name
            ));
        }
        let pins = [
            (
                INCIDENTS,
                r.incidents.source,
                r.incidents.value.as_str().to_owned(),
            ),
            (POLICY, r.policy.source, r.policy.value.clone()),
            (
                CANDIDATE,
                r.candidate.source,
                r.candidate.value.clone().unwrap_or_else(|| NONE.to_owned()),
            ),
        ];
        for (name, source, pinned) in pins {
            let Some(db) = stored.get(name).filter(|_| source == Source::Config) else {
                continue;
            };
            if db.value.trim() != pinned {
                warnings.push(format!(
                    "flag {name} is pinned to {pinned:?} by this replica's configuration while \
                     the database says {:?}: replicas without the pin follow the database",
                    db.value
                ));
            }
        }
        Ok((r, warnings))
    }

    /// Validates `name=value` for `conductor flags set`, returning the value to store.
    pub fn validate_set(&self, name: &str, value: &str) -> Result<String, Error> {
        let value = value.trim();
        match name {
            INCIDENTS => Ok(Incidents::parse(value)?.as_str().to_owned()),
            // A policy is stored by its name: an inline spec in its canonical form, which is
            // also the name its shadow state and evaluations are kept under.
            POLICY => Ok(self.catalog.resolve(value)?.name),
            CANDIDATE if value == NONE => Ok(NONE.to_owned()),
            CANDIDATE => Ok(self.catalog.resolve(value)?.name),
            other => Err(Error::Config(format!(
                "unknown flag {other:?} (flags: {})",
                NAMES.join(", ")
            ))),
        }
    }
}

fn source_word(s: Source) -> &'static str {
    match s {
        Source::Config => "configuration",
        Source::Database => "database",
        Source::Default => "default",
    }
}

const LOCK_FLAGS: &str = "SELECT pg_advisory_xact_lock(hashtextextended('conductor.flags', 0))";

/// Sets flags from `conductor flags set`: validates each, refuses a combination
/// [`Settings::check`] rejects, writes them in one transaction with their history, and clears
/// a newly set candidate's shadow state (a trial starts from nothing). Returns the changes and
/// the warnings of the resulting combination.
pub async fn set_many(
    db: &Db,
    settings: &Settings,
    pairs: &[(String, String)],
    by: &str,
) -> Result<(Vec<Change>, Vec<String>), Error> {
    let mut tx = db.begin().await?;
    // Two operators setting flags at once must not each pass the check against what the
    // other is about to change (SQLite's write transaction already serialises them).
    if let Tx::Postgres(t) = &mut tx {
        sqlx::query(LOCK_FLAGS).execute(&mut **t).await?;
    }
    let mut stored = read_tx(&mut tx).await?;
    let mut values = Vec::new();
    for (name, value) in pairs {
        let value = settings.validate_set(name, value)?;
        stored.insert(
            name.clone(),
            Stored {
                value: value.clone(),
                updated_ms: 0,
                updated_by: by.to_owned(),
            },
        );
        values.push((name, value));
    }
    let (_, warnings) = settings.check(&stored)?;
    let ms = now_ms();
    let mut changes = Vec::new();
    for (name, value) in values {
        if let Some(change) = write(&mut tx, name, &value, by, ms).await? {
            if name == CANDIDATE && value != NONE {
                clear_candidate_state(&mut tx, &value).await?;
            }
            changes.push(change);
        }
    }
    tx.commit().await?;
    for c in &changes {
        tracing::info!(flag = %c.name, old = c.old_value.as_deref(), new = %c.new_value, by, "flag set");
    }
    Ok((changes, warnings))
}

/// Forgets a candidate's shadow state (not its evaluations): its next trial starts afresh.
async fn clear_candidate_state(tx: &mut Tx, candidate: &str) -> Result<(), Error> {
    const ALARMS: &str = "DELETE FROM shadow_alarms WHERE policy = $1";
    const INCIDENTS: &str = "DELETE FROM shadow_incidents WHERE policy = $1";
    const TICKETS: &str = "DELETE FROM shadow_tickets WHERE policy = $1";
    for sql in [ALARMS, INCIDENTS, TICKETS] {
        with_conn!(tx, |c| sqlx::query(sql)
            .bind(candidate)
            .execute(c)
            .await?
            .rows_affected());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(toml: &str) -> Result<Settings, Error> {
        use figment::providers::{Format, Serialized, Toml};
        let config: Config = figment::Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Settings::from_config(config.flag_config())
    }

    fn stored(pairs: &[(&str, &str)]) -> StoredFlags {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    Stored {
                        value: v.to_string(),
                        updated_ms: 1,
                        updated_by: "t".into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn config_wins_over_the_database_which_wins_over_defaults() {
        let s = settings("[flags]\nincidents = \"shadow\"\n").unwrap();
        let r = s
            .resolve(&stored(&[("incidents", "on"), ("candidate", "window=30m")]))
            .unwrap();
        assert_eq!(r.incidents.value, Incidents::Shadow);
        assert_eq!(r.incidents.source, Source::Config);
        assert_eq!(r.candidate.value.as_deref(), Some("window=30m"));
        assert_eq!(r.candidate.source, Source::Database);
        assert_eq!(r.policy.value, "default");
        assert_eq!(r.policy.source, Source::Default);
        let plain = settings("").unwrap().resolve(&stored(&[])).unwrap();
        assert_eq!(plain.incidents.value, Incidents::On);
        assert_eq!(plain.candidate.value, None);
    }

    #[test]
    fn contradictions_are_refused_or_warned_about() {
        let s = settings(
            "[policies.short]\nwindow = \"30m\"\n[policies.same]\nwindow = \"1h\"\n\
             [policies.tickets]\ntickets_only = true\n",
        )
        .unwrap();
        let check = |pairs: &[(&str, &str)]| s.check(&stored(pairs)).map(|(_, w)| w);
        let e = check(&[("policy", "short"), ("candidate", "short")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("authoritative policy \"short\" itself"),
            "{e}"
        );
        // An unknown candidate in the database only warns (its evaluations become ERROR
        // rows); the same name pinned by this replica's configuration is refused at load.
        let w = check(&[("candidate", "nope")]).unwrap();
        assert!(
            w[0].contains("no policy named \"nope\"") && w[0].contains("ERROR"),
            "{w:?}"
        );
        let e = check(&[("policy", "nope")]).unwrap_err();
        assert!(e.to_string().contains("no policy named \"nope\""), "{e}");
        let w = check(&[("candidate", "same")]).unwrap();
        assert!(w[0].contains("expect 100% AGREE"), "{w:?}");
        let w = check(&[("candidate", "short"), ("incidents", "off")]).unwrap();
        assert!(w[0].contains("AUTHORITATIVE_EMPTY"), "{w:?}");
        let w = check(&[("policy", "tickets")]).unwrap();
        assert!(w[0].contains("tickets only"), "{w:?}");
        assert!(check(&[("candidate", "short")]).unwrap().is_empty());
        let pinned = settings("[flags]\nincidents = \"off\"\n").unwrap();
        let (_, w) = pinned.check(&stored(&[("incidents", "on")])).unwrap();
        assert!(w[0].contains("pinned to \"off\""), "{w:?}");
        assert!(pinned
            .check(&stored(&[("incidents", "off")]))
            .unwrap()
            .1
            .is_empty());
    }

    #[test]
    fn a_set_policy_is_stored_by_its_canonical_name() {
        let s = settings("[policies.short]\nwindow = \"30m\"\n").unwrap();
        // Written differently, the same spec names the same shadow state.
        assert_eq!(
            s.validate_set("candidate", " window=60m ").unwrap(),
            "window=1h"
        );
        assert_eq!(s.validate_set("candidate", "short").unwrap(), "short");
        assert_eq!(s.validate_set("candidate", "none").unwrap(), "none");
        assert!(s.validate_set("policy", "nope").is_err());
    }

    #[test]
    fn bad_configuration_is_refused_with_the_key_named() {
        let e = settings("[flags]\nincidents = \"maybe\"\n").unwrap_err();
        assert!(e.to_string().contains("flags.incidents"), "{e}");
        let e = settings("[flags]\ncandidate = \"nope\"\n").unwrap_err();
        assert!(e.to_string().contains("flags.candidate"), "{e}");
        let e = settings("[policies.x]\nwindow = \"0s\"\n").unwrap_err();
        assert!(e.to_string().contains("policies.x"), "{e}");
        let e = settings("[policies.x]\nwindw = \"1h\"\n").unwrap_err();
        assert!(e.to_string().contains("windw"), "{e}");
    }

    #[test]
    fn an_unknown_authoritative_policy_in_the_database_is_a_retryable_mismatch() {
        let s = settings("").unwrap();
        let e = s
            .scheduling(&stored(&[("policy", "elsewhere")]))
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let sched = s
            .scheduling(&stored(&[("candidate", "elsewhere")]))
            .unwrap();
        assert!(sched.candidate.unwrap().is_err());
    }
}
