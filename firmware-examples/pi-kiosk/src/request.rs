//! A generation request: the JSON the page posts, checked against the
//! settings and the loaded domains before any session is taken.

use edgelm_runtime::{SamplerConfig, SessionOptions};
use serde::Deserialize;

use crate::error::ApiError;
use crate::settings::Settings;

/// The body of `POST /api/generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    domain: String,
    #[serde(default)]
    prompt: String,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct Job {
    pub domain: String,
    pub prompt: String,
    pub max_tokens: usize,
    pub opts: SessionOptions,
}

/// Parses and checks `bytes`; `domains` are the loaded ones, `context` the
/// sessions' length, `seed` used when the request gives none.
pub fn parse(bytes: &[u8], s: &Settings, domains: &[String], context: usize, seed: u64) -> Result<Job, ApiError> {
    let body: Body = serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("bad request: {e}")))?;
    if !domains.contains(&body.domain) {
        return Err(ApiError::not_found(format!(
            "unknown domain {:?}; this kiosk has {}",
            body.domain,
            domains.join(", ")
        )));
    }
    if body.prompt.len() > s.max_prompt_bytes {
        return Err(ApiError::too_large(format!(
            "the prompt is {} bytes; at most {} are accepted",
            body.prompt.len(),
            s.max_prompt_bytes
        )));
    }
    let max_tokens = body.max_tokens.unwrap_or(s.default_tokens);
    if max_tokens == 0 || max_tokens > s.max_tokens {
        return Err(ApiError::bad_request(format!("max_tokens must be between 1 and {}", s.max_tokens)));
    }
    let sampler = SamplerConfig {
        temperature: body.temperature.unwrap_or(s.temperature),
        top_p: body.top_p.unwrap_or(s.top_p),
        top_k: body.top_k.unwrap_or(0),
        seed: body.seed.unwrap_or(seed),
        ..SamplerConfig::default()
    };
    if sampler.temperature > 5.0 {
        return Err(ApiError::bad_request("temperature must be between 0 and 5".into()));
    }
    sampler.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let prompt = if body.prompt.trim().is_empty() {
        s.prompts.get(&body.domain).cloned().unwrap_or_default()
    } else {
        body.prompt
    };
    let opts = SessionOptions { sampler, ..s.session_options(context) };
    Ok(Job { domain: body.domain, prompt, max_tokens, opts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Job, ApiError> {
        let domains = ["story".to_string(), "recipe".to_string()];
        parse(body.as_bytes(), &Settings::default(), &domains, 64, 1)
    }

    #[test]
    fn defaults_fill_in() {
        let job = parse_str(r#"{"domain":"recipe"}"#).unwrap();
        assert_eq!(job.prompt, "Title:");
        assert_eq!(job.max_tokens, Settings::default().default_tokens);
        assert_eq!(job.opts.sampler.seed, 1);
        assert_eq!((job.opts.max_seq, job.opts.kv), (64, Settings::default().kv));
    }

    #[test]
    fn bad_values_are_refused_with_their_status() {
        let cases = [
            (r#"{"domain":"poems"}"#, 404),
            (r#"{"domain":"story","temperature":-1}"#, 400),
            (r#"{"domain":"story","temperature":9}"#, 400),
            (r#"{"domain":"story","top_p":0}"#, 400),
            (r#"{"domain":"story","max_tokens":0}"#, 400),
            (r#"{"domain":"story","max_tokens":100000}"#, 400),
            (r#"{"domain":"story","colour":"red"}"#, 400),
            (r#"{"domain":"story","temperature":"hot"}"#, 400),
            ("not json", 400),
        ];
        for (body, status) in cases {
            let err = parse_str(body).expect_err(body);
            assert_eq!(err.status.as_u16(), status, "{body}: {}", err.message);
            assert!(!err.message.is_empty());
        }
        let long = format!(r#"{{"domain":"story","prompt":"{}"}}"#, "a".repeat(1001));
        assert_eq!(parse_str(&long).unwrap_err().status.as_u16(), 413);
    }
}
