//! ES256 signatures checked with the runtime's WebCrypto (`crypto.subtle`, BoringSSL in
//! workerd): native speed, and no curve arithmetic in the upload. WebCrypto's ECDSA signature
//! format is `r || s` (IEEE P1363), exactly JOSE's.

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::ports::Es256Check;

fn set(object: &Object, key: &str, value: &str) -> Result<(), JsValue> {
    Reflect::set(object, &key.into(), &value.into()).map(drop)
}

async fn call(target: &JsValue, method: &str, args: &Array) -> Result<JsValue, JsValue> {
    let f: Function = Reflect::get(target, &method.into())?.dyn_into()?;
    let promise: Promise = Reflect::apply(&f, target, args)?.dyn_into()?;
    JsFuture::from(promise).await
}

/// Whether the signature verifies; a key WebCrypto refuses is an error.
pub async fn verify_es256(check: &Es256Check<'_>) -> Result<bool, JsValue> {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into())?;
    let subtle = Reflect::get(&crypto, &"subtle".into())?;
    let import = Object::new();
    set(&import, "name", "ECDSA")?;
    set(&import, "namedCurve", "P-256")?;
    let key = call(
        &subtle,
        "importKey",
        &Array::of5(
            &"raw".into(),
            &Uint8Array::from(&check.public_key[..]),
            &import,
            &JsValue::FALSE,
            &Array::of1(&"verify".into()),
        ),
    )
    .await?;
    let params = Object::new();
    set(&params, "name", "ECDSA")?;
    set(&params, "hash", "SHA-256")?;
    let valid = call(
        &subtle,
        "verify",
        &Array::of4(
            &params,
            &key,
            &Uint8Array::from(&check.signature[..]),
            &Uint8Array::from(check.message),
        ),
    )
    .await?;
    Ok(valid.as_bool().unwrap_or(false))
}
