//! What every step can reach while it runs.

use std::sync::Arc;

use crate::{
    config::{Config, ForgeKind, SpawnerKind, TrackerKind},
    db::Db,
    error::Error,
    jobs::forge::{github::GithubForge, local::LocalForge, Forge},
    jobs::spawner::{ecs::EcsSpawner, local::LocalSpawner, Spawner},
    jobs::tracker::{jira::JiraTracker, local::LocalTracker, Tracker},
    scheduling::flags::Settings,
};

/// The shared environment of a conductor process's steps.
#[derive(Clone)]
pub struct Env {
    pub db: Db,
    /// This replica's flag overrides and named policies; the flags themselves are read from
    /// the database in each decision's transaction.
    pub flags: Arc<Settings>,
    pub config: Arc<Config>,
    pub spawner: Arc<dyn Spawner>,
    pub forge: Arc<dyn Forge>,
    /// Where notices go (status back on the ticket).
    pub tracker: Arc<dyn Tracker>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("db", &self.db)
            .field("flags", &self.flags)
            .field("spawner", &self.spawner.name())
            .field("forge", &self.forge.name())
            .field("tracker", &self.tracker.name())
            .finish()
    }
}

impl Env {
    /// The environment `config` describes, with the spawner it names (`ecs` loads the AWS
    /// SDK's configuration).
    pub async fn load(db: Db, config: Config) -> Result<Env, Error> {
        let mut env = Env::new(db, config)?;
        if env.config.worker.spawner == SpawnerKind::Ecs {
            let sdk = crate::aws::sdk_config(&env.config.aws).await;
            env.spawner = Arc::new(EcsSpawner::new(&sdk, &env.config.ecs, &env.config.worker));
        }
        Ok(env)
    }

    /// The environment `config` describes with the local spawner, and the forge it names.
    pub fn new(db: Db, config: Config) -> Result<Env, Error> {
        let forge: Arc<dyn Forge> = match config.forge.kind {
            ForgeKind::Local => Arc::new(LocalForge { db: db.clone() }),
            ForgeKind::Github => Arc::new(GithubForge::new(&config.forge)?),
        };
        let tracker: Arc<dyn Tracker> = match config.tracker.kind {
            // With no tracker, notices are still recorded (and end `skipped`).
            TrackerKind::Local | TrackerKind::None => Arc::new(LocalTracker),
            TrackerKind::Jira => Arc::new(JiraTracker::new(&config.tracker)?),
        };
        Ok(Env {
            tracker,
            spawner: Arc::new(LocalSpawner::new(config.worker.clone())?),
            forge,
            db,
            flags: Arc::new(Settings::from_config(config.flag_config())?),
            config: Arc::new(config),
        })
    }
}
