//! Authentication of calls on the client listener, and the principal each call runs as.
//!
//! [`Authenticate`] runs before every public call: with authentication off it admits everyone
//! (the open principal); with it on, a bearer token (`authorization: Bearer <token>`) names the
//! principal, else a client certificate does (by its common name), else the call is
//! UNAUTHENTICATED. Each method then asks [`caller`] for its principal and checks the right it
//! needs (see [`crate::auth::Right`]). Calls on the peer listener come from members, which
//! have already checked their caller: they run as the open principal.

use std::sync::Arc;

use tonic::{Request, Status};

use super::forward::Internal;
use crate::auth::{Authenticator, Principal, Refused, Right};

/// The principal a call runs as (put in the request's extensions by [`Authenticate`]).
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Principal>);

/// The interceptor of the client listener's services.
#[derive(Clone)]
pub struct Authenticate {
    /// `None`: authentication is off.
    auth: Option<Arc<Authenticator>>,
    open: Arc<Principal>,
    /// Calls refused here, by reason (`unauthenticated`, `no_grant`).
    refused: prometheus::IntCounterVec,
}

impl Authenticate {
    pub fn new(auth: Option<Arc<Authenticator>>, refused: prometheus::IntCounterVec) -> Self {
        Authenticate {
            auth,
            open: Arc::new(Principal::open()),
            refused,
        }
    }

    fn principal<T>(
        &self,
        auth: &Authenticator,
        req: &Request<T>,
    ) -> Result<Arc<Principal>, Refused> {
        if let Some(v) = req.metadata().get("authorization") {
            let token = v
                .to_str()
                .ok()
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                })
                .ok_or_else(|| {
                    Refused::Unauthenticated(
                        "the authorization header is not `Bearer <token>`".to_owned(),
                    )
                })?;
            return auth.token(token);
        }
        let cert = req
            .peer_certs()
            .and_then(|c| c.first().and_then(crate::tls::principal_name));
        match cert {
            Some(name) => auth.certificate(&name),
            None => Err(Refused::Unauthenticated(
                "this node requires credentials: a bearer token (--token, REPLOG_TOKEN) or a client certificate".to_owned(),
            )),
        }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let principal = match &self.auth {
            None => self.open.clone(),
            Some(auth) => match self.principal(auth, &req) {
                Ok(p) => p,
                Err(Refused::Unauthenticated(m)) => {
                    self.refused.with_label_values(&["unauthenticated"]).inc();
                    return Err(Status::unauthenticated(m));
                }
                Err(Refused::NoGrant(m)) => {
                    self.refused.with_label_values(&["no_grant"]).inc();
                    return Err(Status::permission_denied(m));
                }
            },
        };
        req.extensions_mut().insert(Caller(principal));
        Ok(req)
    }
}

/// The principal a call runs as: the authenticated caller, or (on the peer listener) the
/// member that forwarded it.
pub fn caller<T>(req: &Request<T>) -> Result<Arc<Principal>, Status> {
    if let Some(Caller(p)) = req.extensions().get::<Caller>() {
        return Ok(p.clone());
    }
    if req.extensions().get::<Internal>().is_some() {
        return Ok(Arc::new(Principal::open()));
    }
    Err(Status::internal(
        "the call has no principal: it bypassed authentication",
    ))
}

/// PERMISSION_DENIED unless `p` has `right`.
pub fn require(p: &Principal, right: Right<'_>) -> Result<(), Status> {
    p.check(right).map_err(Status::permission_denied)
}

/// PERMISSION_DENIED unless the caller of `req` has `right`.
pub fn authorize<T>(req: &Request<T>, right: Right<'_>) -> Result<(), Status> {
    let p = caller(req)?;
    require(&p, right)
}
