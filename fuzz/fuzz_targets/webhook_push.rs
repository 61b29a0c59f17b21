//! The webhook request path (`GitWebhook::handle_push`): random headers and bodies are either
//! accepted with a valid signature or refused; nothing panics. A third of the runs sign the
//! body correctly, so the accepting branches are reached too.

#![no_main]

use hyper::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use pailot::daemon::config::Secret;
use pailot::daemon::source::webhook::{GitWebhook, Verdict};

const SECRET: &[u8] = b"fuzz-webhook-secret";
const NAMES: &[&str] = &[
    "x-hub-signature-256",
    "x-gitea-signature",
    "x-gitlab-token",
    "content-type",
    "x-github-event",
];

fn hmac_hex(body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn request(u: &mut Unstructured<'_>) -> Result<(HeaderMap, Vec<u8>, bool)> {
    let body: Vec<u8> = u.arbitrary()?;
    let mut headers = HeaderMap::new();
    let mut signed = false;
    match u.int_in_range(0..=5)? {
        0 => {
            headers.insert("x-hub-signature-256", format!("sha256={}", hmac_hex(&body)).parse().unwrap());
            signed = true;
        }
        1 => {
            headers.insert("x-gitea-signature", hmac_hex(&body).parse().unwrap());
            signed = true;
        }
        2 => {
            headers.insert("x-gitlab-token", HeaderValue::from_bytes(SECRET).unwrap());
            signed = true;
        }
        _ => {}
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let name = HeaderName::from_static(u.choose(NAMES)?);
        let raw: Vec<u8> = u.arbitrary()?;
        if let Ok(v) = HeaderValue::from_bytes(&raw) {
            headers.append(name, v);
            signed = false;
        }
    }
    Ok((headers, body, signed))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((headers, body, signed)) = request(&mut u) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let hook = GitWebhook::new(Some(Secret::new(SECRET.to_vec())), tx);
    let verdict = hook.handle_push(&headers, &body);
    if signed {
        // A correctly signed request is authenticated, whatever event it says it is.
        assert!(!matches!(verdict, Verdict::Unauthorized(_)), "{verdict:?}");
    }
    match verdict {
        Verdict::Accepted(_) => assert!(rx.try_recv().is_ok(), "accepted without a trigger"),
        Verdict::Ping(_) | Verdict::NotPush(..) | Verdict::Unauthorized(_) => {
            assert!(rx.try_recv().is_err(), "triggered without a push: {verdict:?}")
        }
    }
    let unconfigured = GitWebhook::new(None, tokio::sync::mpsc::channel(1).0);
    assert!(matches!(unconfigured.handle_push(&headers, &body), Verdict::Unauthorized(_)));
});
