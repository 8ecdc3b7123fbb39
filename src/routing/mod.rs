//! The model table: which provider and which upstream model serve each
//! tenant-facing model name. Fallback chains and weights come with issue 5; for now
//! a model has exactly one route.

use crate::config::GatewayConfig;
use crate::providers::Provider;
use std::collections::HashMap;
use std::sync::Arc;

/// Where one model is served.
#[derive(Debug, Clone)]
pub struct Route {
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
}

#[derive(Debug)]
pub struct ModelTable {
    routes: HashMap<String, Route>,
}

/// Why no route could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotFound(String),
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
        let mut routes = HashMap::new();
        for m in &config.models {
            let provider = providers.get(m.provider.as_str()).cloned().ok_or_else(|| {
                format!("model `{}` uses unknown provider `{}`", m.name, m.provider)
            })?;
            let upstream_model = m.upstream_model.as_deref().unwrap_or(&m.name).into();
            let route = Route {
                provider,
                upstream_model,
            };
            if routes.insert(m.name.clone(), route).is_some() {
                return Err(format!("model `{}` is declared twice", m.name));
            }
        }
        Ok(Self { routes })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    pub fn route(&self, model: &str) -> Result<&Route, RoutingError> {
        self.routes
            .get(model)
            .ok_or_else(|| RoutingError::ModelNotFound(model.to_owned()))
    }
}
