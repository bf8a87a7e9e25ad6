//! HTTP basic authentication against exporter-toolkit's `basic_auth_users` (bcrypt
//! hashes). A bcrypt check costs tens of milliseconds by design, so results are cached
//! per configuration, keyed by a SHA-256 of user, hash and password (as exporter-toolkit
//! does): a scraper authenticating every 15 s costs one bcrypt run, not one per scrape.
//! An unknown user is checked against a dummy hash, so the time taken does not tell
//! which users exist.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
};

use axum::http::{HeaderMap, header};
use base64::Engine as _;

/// Most cached results per configuration; the cache is emptied when full.
const CACHE_ENTRIES: usize = 1024;

#[derive(Default)]
pub struct Users {
    hashes: BTreeMap<String, String>,
    cache: Mutex<HashMap<[u8; 32], bool>>,
    /// For unknown users: a hash of the same cost as the configured ones, made on
    /// first need.
    dummy: OnceLock<String>,
}

impl Users {
    /// Checks every hash is a bcrypt hash; the error is (user, what is wrong).
    pub fn new(hashes: BTreeMap<String, String>) -> Result<Self, (String, String)> {
        for (user, hash) in &hashes {
            if user.is_empty() || user.contains(':') {
                return Err((
                    user.clone(),
                    "a user name must be non-empty and without ':' (basic auth separates \
                     user and password with it)"
                        .into(),
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err((
                    user.clone(),
                    "not a bcrypt hash ($2y$..., 60 characters): hash the password with \
                     e.g. `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                        .into(),
                ));
            }
        }
        Ok(Self {
            hashes,
            cache: Mutex::new(HashMap::new()),
            dummy: OnceLock::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether the request's `Authorization: Basic` credentials are a configured user
    /// with the right password. Runs bcrypt off the async threads.
    pub async fn allows(self: &Arc<Self>, headers: &HeaderMap) -> bool {
        let Some((user, password)) = credentials(headers) else {
            return false;
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.check(&user, &password))
            .await
            .unwrap_or(false)
    }

    fn check(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.dummy_hash(), false),
        };
        let mut key = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [user, hash, password] {
            key.update(&(part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        let key: [u8; 32] = key
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let cached = self.lock().get(&key).copied();
        let ok = match cached {
            Some(ok) => ok,
            None => {
                let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
                let mut cache = self.lock();
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, ok);
                ok
            }
        };
        ok && known
    }

    /// A hash to check unknown users against, as costly as the first user's.
    fn dummy_hash(&self) -> &str {
        self.dummy.get_or_init(|| {
            let cost = self
                .hashes
                .values()
                .find_map(|h| h.parse::<bcrypt::HashParts>().ok())
                .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost());
            bcrypt::hash("scan-agent: no such user", cost).unwrap_or_default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// User and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn right_password_only_and_results_are_cached() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Arc::new(Users::new([("prom".to_string(), hash)].into()).unwrap());
        assert!(users.allows(&basic("prom", "s3cret")).await);
        assert!(!users.allows(&basic("prom", "wrong")).await);
        assert!(!users.allows(&basic("other", "s3cret")).await);
        assert!(!users.allows(&HeaderMap::new()).await);
        assert_eq!(users.lock().len(), 3);
        // Cached: the same answers without bcrypt.
        assert!(users.allows(&basic("prom", "s3cret")).await);
        assert!(!users.allows(&basic("prom", "wrong")).await);
        assert_eq!(users.lock().len(), 3);
    }

    #[test]
    fn bad_hashes_and_names_are_refused() {
        let err = Users::new([("prom".to_string(), "plain".to_string())].into())
            .err()
            .unwrap();
        assert_eq!(err.0, "prom");
        assert!(err.1.contains("bcrypt"), "{}", err.1);
        let hash = bcrypt::hash("x", 4).unwrap();
        assert!(Users::new([("a:b".to_string(), hash)].into()).is_err());
    }
}
