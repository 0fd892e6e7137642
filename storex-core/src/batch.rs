//! Running a batch's steps: filling placeholders from earlier steps' keys.
//!
//! Backends apply a batch inside their own transaction and call [`BatchResolver`] step by
//! step, so every backend resolves placeholders the same way.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::operation::{BatchStep, Operation, Outcome};
use crate::registry::Registry;
use crate::validate::validate_resolved_step;
use crate::value::{Pk, Value};

/// Remembers the keys created so far in a batch and fills later steps' replacements.
#[derive(Debug, Default)]
pub struct BatchResolver {
    keys: HashMap<String, Value>,
}

impl BatchResolver {
    /// A resolver for a new batch.
    pub fn new() -> Self {
        BatchResolver::default()
    }

    /// Turns `step` into the operation to run and the placeholder its outcome will fill.
    /// Replacements are filled from earlier steps; a step that had any is then checked
    /// against `registry` again (the others were checked before the batch reached the
    /// backend).
    pub fn resolve(
        &self,
        registry: &Registry,
        step: BatchStep,
    ) -> Result<(Operation, Option<String>)> {
        let BatchStep {
            mut operation,
            placeholder,
            replace,
        } = step;
        if replace.is_empty() {
            return Ok((operation, placeholder));
        }
        for replacement in &replace {
            let value = self
                .keys
                .get(&replacement.placeholder)
                .cloned()
                .ok_or_else(|| {
                    Error::invalid_operation(
                        operation.collection().unwrap_or_default(),
                        format!("placeholder `{}` has no value yet", replacement.placeholder),
                    )
                })?;
            if !replacement.apply(&mut operation, value) {
                return Err(Error::invalid_operation(
                    operation.collection().unwrap_or_default(),
                    format!("a {} step cannot take a replacement", operation.kind()),
                ));
            }
        }
        validate_resolved_step(registry, &mut operation)?;
        Ok((operation, placeholder))
    }

    /// Records what the step with `placeholder` produced, so later steps can use it.
    pub fn record(&mut self, placeholder: Option<String>, outcome: &Outcome) -> Result<()> {
        if let Some(name) = placeholder {
            let value = outcome
                .created_pk()
                .and_then(Pk::single)
                .cloned()
                .ok_or_else(|| {
                    Error::invalid_operation(
                        "",
                        format!("placeholder `{name}` is on a step that created no one-field key"),
                    )
                })?;
            self.keys.insert(name, value);
        }
        Ok(())
    }
}
