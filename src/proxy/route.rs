//! Finding a request's route: the app its `?sdkappid` names (or the only one), with its
//! lanes, upstream endpoint, credentials and metric series, built once per configuration
//! snapshot. A reload builds the next snapshot from the running one, so each app that stays
//! carries its lanes and its signer over.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use hyper::Uri;

use crate::api::Api;
use crate::auth::Callers;
use crate::config::{App, Resolved};
use crate::error::Error;
use crate::limiter::{Lanes, Limiter};
use crate::metrics::{AppSeries, Metrics};
use crate::upstream::{Endpoint, Upstream};
use crate::usersig::{self, UserSig};

use super::sign::{Credentials, carries, same_signer, target};

/// The part of the configuration a request sees: the configured apps, each with its lanes,
/// signer and retry settings. One snapshot is taken per request (`Gateway::routes`) and held
/// until the request is answered; a reload builds a new one and swaps it in whole, so no
/// request ever sees half of one configuration and half of another.
pub struct Routes {
    /// Seeded foldhash: the id comes from the request, and SipHash cost more than the rest
    /// of finding the route.
    by_id: HashMap<u64, Route, foldhash::fast::RandomState>,
    /// Who may call what (`[[callers]]`), from the same configuration as the apps.
    pub(super) callers: Callers,
}

/// One configured app, found once by `?sdkappid`: where it goes, who it signs as, its limits
/// and its metric series, so no later step looks the app up again by id.
pub(super) struct Route {
    pub(super) app: App,
    pub(super) lanes: Lanes,
    pub(super) endpoint: Endpoint,
    /// Who its requests are signed as.
    pub(super) credentials: Arc<Credentials>,
    /// Its metric series.
    pub(super) series: Arc<AppSeries>,
}

impl Routes {
    /// The routes of every app and caller in `resolved`, with lanes from `limiter`, series
    /// from `metrics` and connection pools from `upstream` (shared by origin); with
    /// `previous`, each app that was in it carries its state over.
    pub(super) fn build(
        resolved: &Resolved,
        previous: Option<&Routes>,
        limiter: &Limiter,
        metrics: &Metrics,
        upstream: &Upstream,
    ) -> Routes {
        let callers = Callers::new(&resolved.config().callers);
        let by_id = resolved
            .apps()
            .map(|(app, origin)| {
                let before = previous.and_then(|p| p.by_id.get(&app.sdkappid));
                let endpoint = upstream.endpoint(origin, app.backup_endpoint.as_ref());
                let route = Route::new(app, endpoint, before, limiter, metrics, &callers);
                (app.sdkappid, route)
            })
            .collect();
        Routes { by_id, callers }
    }

    /// The app a request is for: `?sdkappid=N`, or the only configured app.
    pub(super) fn find(&self, query: Option<&str>) -> Result<&Route, Error> {
        match requested_app(query)? {
            Some(id) => self.by_id.get(&id).ok_or(Error::UnknownApp(id)),
            None => match (self.by_id.len(), self.by_id.values().next()) {
                (1, Some(only)) => Ok(only),
                (apps, _) => Err(Error::AmbiguousApp(apps)),
            },
        }
    }
}

/// The SDKAppID a request's query asks for (`sdkappid`, the first if repeated), if any.
pub fn requested_app(query: Option<&str>) -> Result<Option<u64>, Error> {
    let query = query.unwrap_or("");
    // Without `%` or `+` decoding changes nothing, so the pairs are read as they are: the
    // decoder cost about 1,100 instructions a request for `sdkappid=N` alone.
    let given = if query.bytes().any(|b| matches!(b, b'%' | b'+')) {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "sdkappid")
            .map(|(_, value)| value)
    } else {
        plain_sdkappid(query).map(Cow::Borrowed)
    };
    given
        .map(|text| {
            text.parse()
                .map_err(|_| Error::BadSdkAppId(text.into_owned()))
        })
        .transpose()
}

/// The value of the first `sdkappid` pair of a `query` that needs no decoding (no `%` or
/// `+`): pairs split at `&`, a pair's name and value at its first `=`, as the decoder does.
fn plain_sdkappid(query: &str) -> Option<&str> {
    let mut pairs = query;
    loop {
        let end = pairs.bytes().position(|b| b == b'&').unwrap_or(pairs.len());
        if let Some(rest) = pairs.get(..end)?.strip_prefix("sdkappid") {
            if rest.is_empty() {
                return Some(rest);
            }
            if let Some(value) = rest.strip_prefix('=') {
                return Some(value);
            }
        }
        pairs = pairs.get(end + 1..)?;
    }
}

impl Route {
    /// The route of `app`; `before`, the same app's route in the running configuration,
    /// hands on its lanes, its callers' lanes included (see [`Limiter::lanes_after`]) and,
    /// when the key, identifier and lifetime are the same, its current UserSig.
    fn new(
        app: &App,
        endpoint: Endpoint,
        before: Option<&Route>,
        limiter: &Limiter,
        metrics: &Metrics,
        callers: &Callers,
    ) -> Route {
        let shares = callers
            .iter()
            .filter(|c| c.may_use(app.sdkappid))
            .filter_map(|c| Some((c.name(), c.rate_limit()?)));
        let lanes = match before {
            Some(before) => limiter.lanes_after(app, shares, &before.lanes),
            None => limiter.lanes_with_callers(app, shares),
        };
        let credentials = match before {
            Some(before) if same_signer(&before.app, app) => before.credentials.clone(),
            Some(before) => {
                let fresh = Arc::new(Credentials::new(app));
                let _ = before.credentials.newest().successor.set(fresh.clone());
                fresh
            }
            None => Arc::new(Credentials::new(app)),
        };
        Route {
            app: app.clone(),
            lanes,
            endpoint,
            credentials,
            series: metrics.app(app.sdkappid),
        }
    }
}

impl Route {
    /// The upstream path and query for one attempt: admin identity, a current UserSig, a new
    /// `random`.
    /// Fallible because `api` comes from the caller: `Api`'s checks make a failure unexpected,
    /// but a caller's path must never reach a panic.
    pub(super) fn target(&self, api: &Api) -> Result<Uri, Error> {
        let credentials = self.credentials.newest();
        let sig = self.usersig(credentials);
        target(api, credentials, &sig)
    }

    /// The target once the turn has come: `first` (checked before the turn) when it already
    /// carries the credentials and UserSig that signing now would use, else one signed anew
    /// (a key rotated, or a UserSig renewed, while the request waited). `first`'s `random`
    /// was never sent, so it is as new as another.
    pub(super) fn signed_again(&self, api: &Api, first: Uri) -> Uri {
        let credentials = self.credentials.newest();
        let sig = self.usersig(credentials);
        if carries(&first, credentials, &sig) {
            return first;
        }
        // Building cannot fail where it did not just before (same API, same kind of
        // credentials); if it did, the one checked is sent.
        target(api, credentials, &sig).unwrap_or(first)
    }

    /// A current UserSig of `credentials`, counted when newly signed.
    fn usersig(&self, credentials: &Credentials) -> UserSig {
        let (sig, minted) = credentials.signer.usersig(usersig::unix_now());
        if minted {
            self.series.signed();
        }
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(query: &str) -> Result<Option<u64>, String> {
        requested_app(Some(query)).map_err(|e| match e {
            Error::BadSdkAppId(text) => text,
            other => panic!("{other}"),
        })
    }

    #[test]
    fn plain_and_encoded_queries_name_the_same_app() {
        assert_eq!(id(""), Ok(None));
        assert_eq!(id("a=1&b"), Ok(None));
        assert_eq!(id("sdkappid=7"), Ok(Some(7)));
        assert_eq!(id("a=1&&sdkappid=7&sdkappid=8"), Ok(Some(7)));
        assert_eq!(id("sdk%61ppid=9&sdkappid=8"), Ok(Some(9)));
        assert_eq!(id("sdkappid=%37"), Ok(Some(7)));
        assert_eq!(id("sdkappid=1+2"), Err("1 2".to_owned()));
        assert_eq!(id("sdkappid=x=1"), Err("x=1".to_owned()));
        assert_eq!(id("x=1&sdkappid"), Err(String::new()));
        assert_eq!(id("sdkappidx=1&sdkappid=3&"), Ok(Some(3)));
        assert_eq!(id("&sdkappid="), Err(String::new()));
        assert_eq!(requested_app(None).ok(), Some(None));
    }
}
