//! Finding a request's route: the app its `?sdkappid` names (or the only one), with its
//! lanes, upstream endpoint, credentials and metric series, built once per configuration
//! snapshot. A reload builds the next snapshot from the running one, so each app that stays
//! carries its lanes and its signer over.

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
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(name, _)| name == "sdkappid")
        .map(|(_, value)| value);
    given
        .map(|text| {
            text.parse()
                .map_err(|_| Error::BadSdkAppId(text.into_owned()))
        })
        .transpose()
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
