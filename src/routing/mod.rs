//! The model table and the routing decision: which providers and upstream models
//! may serve a tenant-facing model name, in which order. Routes of the same
//! `priority` are spread by `weight` (a weighted shuffle per request); lower
//! priorities are tried first and the rest are fallbacks. The plan decides what a
//! model outside it gets: `reject` or `downgrade`. Circuit breakers ([`breaker`])
//! remember which routes are failing.

pub mod breaker;

use crate::config::{DisallowedModel, GatewayConfig};
use crate::providers::Provider;
use crate::tenancy::{key_allows, Plan};
use crate::FastMap;
use std::collections::HashMap;
use std::sync::Arc;

/// One way to serve a model.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
    pub priority: u32,
    pub weight: u32,
}

#[derive(Debug)]
pub struct ModelTable {
    /// Keyed by the model's name, shared by every request that names it.
    models: FastMap<Arc<str>, Vec<Route>>,
}

/// Why no route could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error(
        "The model `{model}` is not included in your plan. Allowed models: {}.",
        or_none(allowed)
    )]
    ModelNotAllowed { model: String, allowed: Vec<String> },
    #[error(
        "The model `{model}` is not allowed for this API key. Allowed models: {}.",
        or_none(allowed)
    )]
    KeyModelNotAllowed { model: String, allowed: Vec<String> },
    #[error("every route for `{0}` is failing; try again shortly")]
    AllRoutesOpen(String),
}

/// A refusal's list of models, which a key's own list can leave empty.
fn or_none(models: &[String]) -> String {
    if models.is_empty() {
        "none".to_owned()
    } else {
        models.join(", ")
    }
}

/// The model a request will be served as, after the plan's policy.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    /// The tenant-facing model that will serve the request (the table's own
    /// name for it: no copy per request).
    pub model: Arc<str>,
    /// Set when the plan downgraded the requested model.
    pub downgraded_from: Option<Arc<str>>,
}

impl ModelTable {
    pub fn build(config: &GatewayConfig) -> Result<Self, String> {
        let mut providers: HashMap<&str, Arc<Provider>> = HashMap::new();
        for p in &config.providers {
            let built = Arc::new(Provider::from_config(p)?);
            if providers.insert(p.name.as_str(), built).is_some() {
                return Err(format!("provider `{}` is declared twice", p.name));
            }
        }
        let mut models = FastMap::default();
        for m in &config.models {
            let mut routes = Vec::new();
            let mut add = |provider: &str,
                           model: Option<&str>,
                           priority: u32,
                           weight: u32|
             -> Result<(), String> {
                let provider = providers.get(provider).cloned().ok_or_else(|| {
                    format!("model `{}` uses unknown provider `{provider}`", m.name)
                })?;
                // Weight 0 used to serve as 1: a route meant to be drained kept its share.
                if weight == 0 {
                    return Err(format!(
                        "model `{}`: route to `{}` has weight 0; to drain a route, remove it or give it a higher `priority` number (tried after the others)",
                        m.name,
                        provider.name()
                    ));
                }
                routes.push(Route {
                    provider,
                    upstream_model: model.unwrap_or(&m.name).into(),
                    priority,
                    weight,
                });
                Ok(())
            };
            match (&m.provider, m.routes.is_empty()) {
                (Some(p), true) => add(p, m.upstream_model.as_deref(), 0, 1)?,
                (None, false) => {
                    if m.upstream_model.is_some() {
                        return Err(format!(
                            "model `{}`: `upstream_model` goes with `provider`, not `routes`",
                            m.name
                        ));
                    }
                    for r in &m.routes {
                        add(&r.provider, r.model.as_deref(), r.priority, r.weight)?;
                    }
                }
                _ => {
                    return Err(format!(
                        "model `{}` needs either `provider` (one route) or `routes`, not both",
                        m.name
                    ))
                }
            }
            routes.sort_by_key(|r| r.priority);
            if models.insert(Arc::from(m.name.as_str()), routes).is_some() {
                return Err(format!("model `{}` is declared twice", m.name));
            }
        }
        // Plans: the downgrade target must be a model of the plan, and is
        // only read under `downgrade` (under `reject` it would be ignored).
        for p in &config.plans {
            if let (DisallowedModel::Reject, Some(t)) = (p.disallowed_model, &p.downgrade_to) {
                return Err(format!(
                    "plan `{}`: `downgrade_to = \"{t}\"` needs `disallowed_model = \"downgrade\"` (the plan rejects models outside it)",
                    p.name
                ));
            }
            if p.disallowed_model == DisallowedModel::Downgrade {
                match &p.downgrade_to {
                    Some(t) if p.models.contains(t) => {}
                    _ => {
                        return Err(format!(
                            "plan `{}`: `disallowed_model = \"downgrade\"` needs `downgrade_to` naming one of its models",
                            p.name
                        ))
                    }
                }
            }
        }
        Ok(Self { models })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(|name| &**name)
    }

    pub fn contains(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Applies the plan, and the key's own model list (`key_models`), to the
    /// requested model. A model the key may not use is one outside the plan:
    /// the plan's policy applies, and a downgrade only to a model the key may use.
    pub fn choose(
        &self,
        plan: &Plan,
        key_models: Option<&[Arc<str>]>,
        requested: &str,
    ) -> Result<ModelChoice, RoutingError> {
        let Some((name, _)) = self.models.get_key_value(requested) else {
            return Err(RoutingError::ModelNotFound(requested.to_owned()));
        };
        if plan.allows(requested) && key_allows(key_models, requested) {
            return Ok(ModelChoice {
                model: name.clone(),
                downgraded_from: None,
            });
        }
        match (&plan.disallowed_model, &plan.downgrade_to) {
            (DisallowedModel::Downgrade, Some(to)) if key_allows(key_models, to) => {
                Ok(ModelChoice {
                    model: to.clone(),
                    downgraded_from: Some(name.clone()),
                })
            }
            _ => {
                let allowed = plan
                    .models
                    .iter()
                    .filter(|m| key_allows(key_models, m))
                    .map(|m| m.to_string())
                    .collect();
                let model = requested.to_owned();
                Err(if plan.allows(requested) {
                    RoutingError::KeyModelNotAllowed { model, allowed }
                } else {
                    RoutingError::ModelNotAllowed { model, allowed }
                })
            }
        }
    }

    /// The routes to try for `model`, in order: by priority, and within a
    /// priority a weighted shuffle, so load spreads by weight.
    pub fn routes(&self, model: &str) -> Result<Vec<Route>, RoutingError> {
        let all = self
            .models
            .get(model)
            .ok_or_else(|| RoutingError::ModelNotFound(model.to_owned()))?;
        let mut out = Vec::with_capacity(all.len());
        let mut i = 0;
        while i < all.len() {
            let j = all[i..]
                .iter()
                .position(|r| r.priority != all[i].priority)
                .map_or(all.len(), |n| i + n);
            out.extend_from_slice(&all[i..j]);
            // The group's weighted shuffle in place (no second `Vec` per
            // request): the pick moves to the front of what is left, the
            // rest keep their order.
            for k in i..j {
                let rest = &mut out[k..j];
                let total: u64 = rest.iter().map(|r| u64::from(r.weight)).sum();
                let mut pick = fastrand::u64(0..total.max(1));
                let idx = rest
                    .iter()
                    .position(|r| {
                        let w = u64::from(r.weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                rest[..=idx].rotate_right(1);
            }
            i = j;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, u32, u32)]) -> ModelTable {
        let routes = routes
            .iter()
            .map(|&(name, priority, weight)| Route {
                provider: Arc::new(Provider::Mock { name: name.into() }),
                upstream_model: name.into(),
                priority,
                weight,
            })
            .collect();
        let mut models = FastMap::default();
        models.insert(Arc::from("m"), routes);
        ModelTable { models }
    }

    fn order(t: &ModelTable) -> Vec<String> {
        let routes = t.routes("m").unwrap();
        routes
            .iter()
            .map(|r| r.upstream_model.to_string())
            .collect()
    }

    #[test]
    fn routes_go_by_priority_each_once_spread_by_weight_within_a_priority() {
        let t = table(&[
            ("a", 0, 3),
            ("b", 0, 1),
            ("c", 1, 1),
            ("d", 1, 1),
            ("e", 2, 1),
        ]);
        let mut first_a = 0;
        for _ in 0..4_000 {
            let o = order(&t);
            let mut head: Vec<_> = o[..2].to_vec();
            head.sort();
            let mut mid: Vec<_> = o[2..4].to_vec();
            mid.sort();
            assert_eq!(
                (head, mid, o[4].as_str()),
                (
                    vec!["a".to_owned(), "b".to_owned()],
                    vec!["c".to_owned(), "d".to_owned()],
                    "e"
                )
            );
            first_a += usize::from(o[0] == "a");
        }
        // Weight 3 against 1: first three times in four (±5 standard deviations).
        assert!((2_860..=3_140).contains(&first_a), "{first_a}");
    }

    /// A plan of `models` that rejects other models, or downgrades them to
    /// `downgrade_to`.
    fn plan(models: &[&str], downgrade_to: Option<&str>) -> crate::tenancy::Plan {
        crate::tenancy::Plan {
            name: "p".into(),
            models: models.iter().map(|&m| Arc::from(m)).collect(),
            byok: Default::default(),
            disallowed_model: if downgrade_to.is_some() {
                DisallowedModel::Downgrade
            } else {
                DisallowedModel::Reject
            },
            downgrade_to: downgrade_to.map(Arc::from),
            limits: Default::default(),
        }
    }

    #[test]
    fn a_choice_names_the_model_by_the_tables_own_name() {
        let mut t = table(&[("a", 0, 1)]);
        let small = t.models["m"].clone();
        t.models.insert(Arc::from("small"), small);
        let open = plan(&["m", "small"], None);
        let first = t.choose(&open, None, "m").unwrap();
        let second = t.choose(&open, None, "m").unwrap();
        assert_eq!(&*first.model, "m");
        assert!(Arc::ptr_eq(&first.model, &second.model));
        assert!(first.downgraded_from.is_none());
        assert!(
            matches!(t.choose(&open, None, "other"), Err(RoutingError::ModelNotFound(m)) if m == "other")
        );
        let down = plan(&["small"], Some("small"));
        let choice = t.choose(&down, None, "m").unwrap();
        assert_eq!(&*choice.model, "small");
        let from = choice.downgraded_from.unwrap();
        assert!(Arc::ptr_eq(&from, &first.model));
        assert!(matches!(
            t.choose(&plan(&["small"], None), None, "m"),
            Err(RoutingError::ModelNotAllowed { .. })
        ));
    }

    /// A key's list narrows its plan: a model outside the list is one outside
    /// the plan, downgraded only to a model the key may use, and a refusal
    /// lists what the key may use.
    #[test]
    fn a_keys_model_list_narrows_its_plan() {
        let mut t = table(&[("a", 0, 1)]);
        for name in ["small", "big"] {
            let routes = t.models["m"].clone();
            t.models.insert(Arc::from(name), routes);
        }
        let plan = |downgrade_to| plan(&["m", "small", "big"], downgrade_to);
        let key: Vec<Arc<str>> = vec!["small".into(), "m".into()];
        let reject = plan(None);
        assert_eq!(
            &*t.choose(&reject, Some(&key), "small").unwrap().model,
            "small"
        );
        let refused = t.choose(&reject, Some(&key), "big").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "The model `big` is not allowed for this API key. Allowed models: m, small."
        );
        assert!(matches!(refused, RoutingError::KeyModelNotAllowed { .. }));
        let down = t.choose(&plan(Some("small")), Some(&key), "big").unwrap();
        assert_eq!(
            (&*down.model, down.downgraded_from.as_deref()),
            ("small", Some("big"))
        );
        let big_only: Vec<Arc<str>> = vec!["big".into()];
        assert!(matches!(
            t.choose(&plan(Some("small")), Some(&big_only), "m"),
            Err(RoutingError::KeyModelNotAllowed { .. })
        ));
        let outside: Vec<Arc<str>> = vec!["other".into()];
        assert_eq!(
            t.choose(&reject, Some(&outside), "m")
                .unwrap_err()
                .to_string(),
            "The model `m` is not allowed for this API key. Allowed models: none."
        );
    }

    #[test]
    fn a_route_of_weight_zero_is_refused_with_how_to_drain_it() {
        let config = |weight: u32| {
            GatewayConfig::parse(&format!(
                "[[providers]]\nname = \"a\"\nkind = \"mock\"\n[[providers]]\nname = \"b\"\nkind = \"mock\"\n\
                 [[models]]\nname = \"m\"\nroutes = [{{ provider = \"a\" }}, {{ provider = \"b\", weight = {weight} }}]\n"
            ))
            .unwrap()
        };
        let err = ModelTable::build(&config(0)).unwrap_err();
        assert!(err.contains("model `m`"), "{err}");
        assert!(err.contains("`b` has weight 0"), "{err}");
        assert!(err.contains("remove it"), "{err}");
        assert!(err.contains("priority"), "{err}");
        assert!(ModelTable::build(&config(2)).is_ok());
    }

    #[test]
    fn zero_weights_keep_the_configured_order() {
        let t = table(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        assert_eq!(order(&t), ["a", "b", "c"]);
        assert!(matches!(
            t.routes("other"),
            Err(RoutingError::ModelNotFound(_))
        ));
    }
}
