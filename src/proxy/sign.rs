//! Who a request is signed as: an app's admin identity and a current UserSig, injected with a
//! new `random` into the upstream URL of every attempt. The caller's own `identifier`,
//! `usersig`, `random` and `contenttype` are never read: the target is built from scratch.

use std::sync::{Arc, OnceLock};

use hyper::Uri;

use crate::api::Api;
use crate::config::App;
use crate::error::Error;
use crate::usersig::{Signer, UserSig};

/// Who an app's requests are signed as: the credentials of the query and the signer that
/// caches the current UserSig. When a reload changes the key (or the identifier, or the
/// lifetime), the new ones become their *successor*: a request of the old configuration that
/// still runs signs with the successor from then on, so no UserSig of a rotated key is sent
/// again.
pub(super) struct Credentials {
    /// `?sdkappid=N&identifier=ID&usersig=`.
    query: String,
    pub(super) signer: Signer,
    pub(super) successor: OnceLock<Arc<Credentials>>,
}

impl Credentials {
    pub(super) fn new(app: &App) -> Credentials {
        let identifier: String =
            form_urlencoded::byte_serialize(app.identifier.as_bytes()).collect();
        Credentials {
            query: format!(
                "?sdkappid={}&identifier={identifier}&usersig=",
                app.sdkappid
            ),
            signer: Signer::new(
                app.secret_key.clone(),
                app.sdkappid,
                app.identifier.clone(),
                app.usersig_ttl,
            ),
            successor: OnceLock::new(),
        }
    }

    /// The credentials in force now: these, or the last of their successors.
    pub(super) fn newest(&self) -> &Credentials {
        let mut credentials = self;
        while let Some(next) = credentials.successor.get() {
            credentials = next;
        }
        credentials
    }
}

/// Whether `target` is signed as `credentials` with `sig`: its query is theirs up to its
/// `random`. Neither the (percent-encoded) identifier nor a UserSig holds a `&`.
pub(super) fn carries(target: &Uri, credentials: &Credentials, sig: &UserSig) -> bool {
    target
        .query()
        .and_then(|query| query.strip_prefix(credentials.query.trim_start_matches('?')))
        .and_then(|rest| rest.strip_prefix(sig.as_str()))
        .is_some_and(|rest| rest.starts_with("&random="))
}

/// `api`'s upstream path and query, signed with `sig` of `credentials`, with a new `random`:
/// appended into one buffer of exactly its length, which `Uri` takes without a copy (a
/// buffer with room to spare would cost `Bytes` a second allocation to share it).
pub(super) fn target(api: &Api, credentials: &Credentials, sig: &UserSig) -> Result<Uri, Error> {
    let mut random = itoa::Buffer::new();
    let random = random.format(rand::random::<u32>());
    let parts = [
        "/v4/",
        api.name(),
        &credentials.query,
        sig.as_str(),
        "&random=",
        random,
        "&contenttype=json",
    ];
    let mut target = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        target.push_str(part);
    }
    Uri::try_from(target).map_err(|_| Error::Unforwardable)
}

/// Whether `a` and `b` sign the same UserSigs: same key, app, identifier and lifetime.
pub(super) fn same_signer(a: &App, b: &App) -> bool {
    a.secret_key == b.secret_key
        && a.sdkappid == b.sdkappid
        && a.identifier == b.identifier
        && a.usersig_ttl == b.usersig_ttl
}

#[cfg(test)]
mod tests {
    use super::{Credentials, carries, target};
    use crate::api::Api;
    use crate::config::Config;
    use crate::usersig::unix_now;

    fn credentials(identifier: &str, key: &str) -> Credentials {
        let config = Config::from_toml(&format!(
            "[[apps]]\nsdkappid = 1400000001\nidentifier = {identifier:?}\nsecret_key = {key:?}\nregion = \"singapore\"\n"
        ))
        .unwrap();
        Credentials::new(&config.apps[0])
    }

    #[test]
    fn a_target_is_sent_again_only_while_its_credentials_and_usersig_are_current() {
        let api = Api::from_path("/v4/openim/sendmsg").unwrap();
        let now = unix_now();
        let signed = credentials("admin", "key-1");
        let (sig, _) = signed.signer.usersig(now);
        let first = target(&api, &signed, &sig).unwrap();
        assert!(carries(&first, &signed, &sig));
        assert!(carries(&first, &signed, &signed.signer.usersig(now).0));
        // A key rotated while the request waited: new credentials, a UserSig of the new key.
        let rotated = credentials("admin", "key-2");
        assert!(!carries(&first, &rotated, &rotated.signer.usersig(now).0));
        // The UserSig renewed (half its lifetime passed) while the request waited.
        let renewed = signed.signer.usersig(now + 600).0;
        assert_ne!(renewed, sig);
        assert!(!carries(&first, &signed, &renewed));
        // Another identifier, even one the first begins with, with the same UserSig text.
        for identifier in ["admin2", "adm", "admin&usersig="] {
            assert!(
                !carries(&first, &credentials(identifier, "key-1"), &sig),
                "{identifier}"
            );
        }
    }
}
