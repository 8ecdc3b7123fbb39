//! [`StoreBackend`]: where the admin [`Store`] lives, so that every gateway
//! instance serves the same resellers and tenants.
//!
//! - A JSON file (`store_path`): instances on one host (or one shared volume)
//!   share it. A change takes an exclusive `flock` on a lock file beside it,
//!   so two processes never interleave a read-check-write.
//! - A Redis hash (`redis_url`): instances anywhere share it. A change is a
//!   compare-and-set on the hash's `version` (one Lua script).
//!
//! Either way the store has a [`Version`]: a change is written only if the
//! store is still at the version it was made from (else it is refused as a
//! conflict, to be retried, never a lost update), and each instance polls the
//! version to pick up the others' changes. With Redis, a `store_path` keeps
//! the last copy read, which a start while Redis is down serves from.

use super::store::Store;
use crate::config::AdminConfig;
use fs4::fs_std::FileExt;
use ring::digest::{digest, SHA256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A store's version: the file's digest, or the Redis hash's counter.
pub type Version = String;

/// How long one Redis call may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-set of the store: writes `body` and bumps `version` only if
/// the version is still `ARGV[1]`; returns the new version, or nil.
const CAS_SCRIPT: &str = r"
local v = redis.call('HGET', KEYS[1], 'version') or '0'
if v ~= ARGV[1] then return false end
local n = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'version', n)
return n
";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the store was changed by another instance meanwhile")]
    Conflict,
    #[error("{0}")]
    Unavailable(String),
}

// One per gateway: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreBackend {
    File {
        path: PathBuf,
        /// The file's identity when its version was last computed: a poll
        /// reads and hashes the file only when this changed.
        seen: Mutex<Option<(FileStamp, Version)>>,
    },
    Redis {
        client: redis::Client,
        key: String,
        /// The connection, kept between calls and dropped after an error.
        conn: Mutex<Option<redis::Connection>>,
        /// The last copy read, for a start while Redis is down.
        cache: Option<PathBuf>,
    },
}

impl StoreBackend {
    pub fn from_config(admin: &AdminConfig) -> Result<Self, String> {
        match admin.resolved_redis_url()? {
            Some(url) => Ok(Self::Redis {
                client: redis::Client::open(url.as_str()).map_err(|e| {
                    format!(
                        "[admin] redis url: {}",
                        crate::config::mask_userinfo(&e.to_string())
                    )
                })?,
                key: admin.redis_key.clone(),
                conn: Mutex::new(None),
                cache: admin.store_path.clone(),
            }),
            None => admin
                .store_path
                .clone()
                .map(|path| Self::File {
                    path,
                    seen: Mutex::new(None),
                })
                .ok_or_else(|| "[admin] needs store_path or redis_url / redis_url_env".into()),
        }
    }

    /// Reads the store and its version. With Redis down, a start (`at_start`)
    /// serves the last copy kept in `store_path`, if there is one.
    pub fn load(&self, at_start: bool) -> Result<(Store, Version), BackendError> {
        match self {
            Self::File { path, .. } => read_file(path),
            Self::Redis { cache, .. } => match self.redis_load() {
                Ok((store, version)) => {
                    keep_copy(cache.as_deref(), &store);
                    Ok((store, version))
                }
                Err(e) => match cache {
                    Some(path) if at_start && path.exists() => {
                        tracing::warn!(error = %e, path = %path.display(), "admin store in Redis unreachable: starting from its last copy");
                        // Never the version of a Redis store: the first sync reads Redis.
                        read_file(path).map(|(store, _)| (store, "unread".into()))
                    }
                    _ => Err(e),
                },
            },
        }
    }

    /// The store's current version (cheap: a digest of a small file, or one
    /// `HGET`).
    pub fn version(&self) -> Result<Version, BackendError> {
        match self {
            Self::File { path, seen } => {
                let stamp = FileStamp::of(path);
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if let (Some(now), Some((then, version))) = (&stamp, seen.as_ref()) {
                    if now == then {
                        return Ok(version.clone());
                    }
                }
                let version = file_version(path)?;
                *seen = stamp.map(|s| (s, version.clone()));
                Ok(version)
            }
            Self::Redis { key, .. } => self.with_redis(|c| {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("version")
                    .query::<Option<String>>(c)
                    .map(|v| v.unwrap_or_else(|| "0".into()))
            }),
        }
    }

    /// Writes `store` if the stored version is still `expected`, under the
    /// file's lock or by Redis's compare-and-set; returns the new version.
    pub fn save(&self, expected: &str, store: &Store) -> Result<Version, BackendError> {
        match self {
            Self::File { path, seen } => {
                let _lock = lock_file(path)?;
                if file_version(path)? != expected {
                    return Err(BackendError::Conflict);
                }
                let written = store
                    .save(path)
                    .map_err(|e| BackendError::Unavailable(format!("{}: {e}", path.display())))?;
                let version = hex::encode(digest(&SHA256, &written));
                // The next poll need not read back what was just written.
                *seen.lock().unwrap_or_else(|p| p.into_inner()) =
                    FileStamp::of(path).map(|s| (s, version.clone()));
                Ok(version)
            }
            Self::Redis { key, cache, .. } => {
                let body = store
                    .to_json()
                    .map_err(|e| BackendError::Unavailable(e.to_string()))?;
                let written = self.with_redis(|c| {
                    redis::Script::new(CAS_SCRIPT)
                        .key(key)
                        .arg(expected)
                        .arg(&body)
                        .invoke::<Option<i64>>(c)
                })?;
                let version = written.ok_or(BackendError::Conflict)?.to_string();
                keep_copy(cache.as_deref(), store);
                Ok(version)
            }
        }
    }

    fn redis_load(&self) -> Result<(Store, Version), BackendError> {
        let Self::Redis { key, .. } = self else {
            return Err(BackendError::Unavailable("not a Redis store".into()));
        };
        let (body, version): (Option<String>, Option<String>) = self.with_redis(|c| {
            redis::cmd("HMGET")
                .arg(key)
                .arg("body")
                .arg("version")
                .query(c)
        })?;
        let store = match body {
            Some(b) => {
                Store::parse(&b, &format!("Redis key {key}")).map_err(BackendError::Unavailable)?
            }
            None => Store::default(),
        };
        Ok((store, version.unwrap_or_else(|| "0".into())))
    }

    fn with_redis<T>(
        &self,
        call: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BackendError> {
        let Self::Redis { client, conn, .. } = self else {
            return Err(BackendError::Unavailable("not a Redis store".into()));
        };
        let mut slot = conn.lock().unwrap_or_else(|p| p.into_inner());
        let unavailable = |e: redis::RedisError| {
            BackendError::Unavailable(format!(
                "admin store in Redis: {}",
                crate::config::mask_userinfo(&e.to_string())
            ))
        };
        if slot.is_none() {
            let c = client
                .get_connection_with_timeout(REDIS_TIMEOUT)
                .map_err(unavailable)?;
            c.set_read_timeout(Some(REDIS_TIMEOUT))
                .map_err(unavailable)?;
            c.set_write_timeout(Some(REDIS_TIMEOUT))
                .map_err(unavailable)?;
            *slot = Some(c);
        }
        let Some(c) = slot.as_mut() else {
            return Err(BackendError::Unavailable("no Redis connection".into()));
        };
        let out = call(c);
        if out.is_err() {
            // A broken or timed-out connection may hold a late reply.
            *slot = None;
        }
        out.map_err(unavailable)
    }
}

/// What identifies one writing of the store file: every write is a rename
/// of a new file, so its inode changes even within one mtime tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: m.modified().ok(),
            len: m.len(),
            #[cfg(unix)]
            inode: std::os::unix::fs::MetadataExt::ino(&m),
        })
    }
}

/// Keeps the copy of a Redis store at `path`, for a start while Redis is
/// down; a failure is logged, not the change's.
fn keep_copy(path: Option<&Path>, store: &Store) {
    if let Some(path) = path {
        if let Err(e) = store.save(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep a copy of the admin store");
        }
    }
}

/// The store file's version alone (the digest of its bytes; none yet: "").
fn file_version(path: &Path) -> Result<Version, BackendError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(hex::encode(digest(&SHA256, &bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(BackendError::Unavailable(format!(
            "cannot read the admin store {}: {e}",
            path.display()
        ))),
    }
}

/// The store file and its version (the digest of its bytes; none yet is an
/// empty store at version "").
fn read_file(path: &Path) -> Result<(Store, Version), BackendError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Store::default(), String::new()))
        }
        Err(e) => {
            return Err(BackendError::Unavailable(format!(
                "cannot read the admin store {}: {e}",
                path.display()
            )))
        }
    };
    let version = hex::encode(digest(&SHA256, &bytes));
    let text = String::from_utf8(bytes).map_err(|_| {
        BackendError::Unavailable(format!("the admin store {} is not UTF-8", path.display()))
    })?;
    let store =
        Store::parse(&text, &path.display().to_string()).map_err(BackendError::Unavailable)?;
    Ok((store, version))
}

/// An exclusive lock on `{store}.lock`, held until the file is dropped.
fn lock_file(path: &Path) -> Result<std::fs::File, BackendError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .and_then(|f| FileExt::lock_exclusive(&f).map(|()| f))
        .map_err(|e| {
            BackendError::Unavailable(format!("cannot lock {}: {e}", Path::new(&name).display()))
        })?;
    Ok(file)
}
