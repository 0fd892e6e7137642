//! Checks operations against the registry before they reach a backend.
//!
//! Validation runs twice: when an operation enters a [`crate::Storage`] (so middleware only
//! ever sees well-formed operations) and once more at the end of the chain (so whatever the
//! middleware produced is checked too). The first pass lets a create leave out (or null) a UUID key,
//! which [`crate::UuidPkMiddleware`] fills in. Both passes normalize values to the precision
//! storex keeps.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::operation::{BatchStep, Operation, ReplaceTarget};
use crate::query::{Filter, Predicate, Query};
use crate::registry::{CollectionDef, Registry};
use crate::value::{FieldType, Object, Pk, Value};

/// Which pass of validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// On entry to the chain: a create may leave out a UUID primary key, or set it to null.
    Entry,
    /// Before the backend: everything must be complete.
    Backend,
}

/// Checks `op` against `registry` and normalizes its values.
pub(crate) fn validate(registry: &Registry, op: &mut Operation, stage: Stage) -> Result<()> {
    match op {
        Operation::Batch { steps } => validate_batch(registry, steps, stage),
        other => validate_single(registry, other, stage, &HashSet::new()),
    }
}

/// Checks one batch step once its replacements have been filled in.
pub(crate) fn validate_resolved_step(registry: &Registry, op: &mut Operation) -> Result<()> {
    validate_single(registry, op, Stage::Backend, &HashSet::new())
}

fn validate_batch(registry: &Registry, steps: &mut [BatchStep], stage: Stage) -> Result<()> {
    let mut placeholders = HashSet::new();
    for (index, step) in steps.iter_mut().enumerate() {
        validate_step(registry, step, stage, &mut placeholders).map_err(|source| {
            Error::BatchStep {
                step: index,
                source: Box::new(source),
            }
        })?;
    }
    Ok(())
}

fn validate_step<'s>(
    registry: &Registry,
    step: &'s mut BatchStep,
    stage: Stage,
    placeholders: &mut HashSet<&'s str>,
) -> Result<()> {
    // The collection's name is copied only into an error (a batch step is checked per row).
    let invalid = |op: &Operation, problem: String| {
        Error::invalid_operation(op.collection().unwrap_or_default(), problem)
    };
    if !step.operation.is_write() || matches!(step.operation, Operation::Batch { .. }) {
        return Err(invalid(
            &step.operation,
            format!(
                "a batch step must be a create, put, update or delete, not {}",
                step.operation.kind()
            ),
        ));
    }
    let mut filled = HashSet::new();
    for replacement in &step.replace {
        if !placeholders.contains(replacement.placeholder.as_str()) {
            return Err(invalid(
                &step.operation,
                format!(
                    "placeholder `{}` is not produced by an earlier step",
                    replacement.placeholder
                ),
            ));
        }
        match (&replacement.target, &step.operation) {
            (ReplaceTarget::Pk, Operation::UpdateByPk { .. } | Operation::DeleteByPk { .. }) => {}
            (ReplaceTarget::Pk, _) => {
                return Err(invalid(
                    &step.operation,
                    "only an update or delete by key can take its key from a placeholder".into(),
                ))
            }
            (
                ReplaceTarget::Field(field),
                Operation::Create { .. }
                | Operation::Put { .. }
                | Operation::UpdateByPk { .. }
                | Operation::UpdateWhere { .. }
                | Operation::UpdateWhereReturningPks { .. },
            ) => {
                filled.insert(field.clone());
            }
            (ReplaceTarget::Field(_), _) => {
                return Err(invalid(
                    &step.operation,
                    "only a create, a put or an update can take a field from a placeholder".into(),
                ))
            }
        }
    }
    let pk_filled = step.replace.iter().any(|r| r.target == ReplaceTarget::Pk);
    if !pk_filled {
        validate_single(registry, &mut step.operation, stage, &filled)?;
    } else {
        // The key is unknown until the batch runs; check the rest now.
        let def = registry.collection(step.operation.collection().unwrap_or_default())?;
        if let Operation::UpdateByPk { changes, .. } = &mut step.operation {
            validate_changes(def, changes, &filled)?;
        }
    }
    if let Some(name) = &step.placeholder {
        if !matches!(step.operation, Operation::Create { .. }) {
            return Err(invalid(
                &step.operation,
                format!("placeholder `{name}` is on a step that is not a create"),
            ));
        }
        let collection = step.operation.collection().unwrap_or_default();
        let def = registry.collection(collection)?;
        if def.pk_fields().len() != 1 {
            let problem = format!(
                "placeholder `{name}` names the key of `{collection}`, which has a compound key"
            );
            return Err(invalid(&step.operation, problem));
        }
        if !placeholders.insert(name.as_str()) {
            return Err(invalid(
                &step.operation,
                format!("placeholder `{name}` is defined twice"),
            ));
        }
    }
    Ok(())
}

fn validate_single(
    registry: &Registry,
    op: &mut Operation,
    stage: Stage,
    filled: &HashSet<String>,
) -> Result<()> {
    match op {
        Operation::Create { collection, object } => {
            let def = registry.collection(collection)?;
            def.fill_defaults(object);
            validate_object(def, object, stage, filled)
        }
        // A put names its object: its key is never filled in by a middleware.
        Operation::Put { collection, object } => {
            let def = registry.collection(collection)?;
            def.fill_defaults(object);
            validate_object(def, object, Stage::Backend, filled)
        }
        Operation::UpdateByPk {
            collection,
            pk,
            changes,
        } => {
            let def = registry.collection(collection)?;
            validate_pk(def, pk)?;
            validate_changes(def, changes, filled)
        }
        Operation::UpdateWhere {
            collection,
            filter,
            changes,
        }
        | Operation::UpdateWhereReturningPks {
            collection,
            filter,
            changes,
        } => {
            let def = registry.collection(collection)?;
            validate_filter(def, filter)?;
            validate_changes(def, changes, filled)
        }
        Operation::DeleteByPk { collection, pk } => {
            validate_pk(registry.collection(collection)?, pk)
        }
        Operation::DeleteWhere { collection, filter }
        | Operation::DeleteWhereReturningPks { collection, filter }
        | Operation::Count { collection, filter } => {
            validate_filter(registry.collection(collection)?, filter)
        }
        Operation::FindOne { collection, query } | Operation::FindMany { collection, query } => {
            validate_query(registry.collection(collection)?, query)
        }
        Operation::FindValues {
            collection,
            query,
            fields,
        } => {
            let def = registry.collection(collection)?;
            if fields.is_empty() {
                return Err(Error::invalid_operation(
                    collection.as_str(),
                    "a find of values names at least one field",
                ));
            }
            for field in fields {
                field_type(def, field)?;
            }
            validate_query(def, query)
        }
        Operation::Batch { .. } => Err(Error::invalid_operation(
            "",
            "a batch cannot contain another batch",
        )),
    }
}

fn field_type(def: &CollectionDef, field: &str) -> Result<(FieldType, bool)> {
    def.field_def(field)
        .map(|f| (f.ty, f.optional))
        .ok_or_else(|| Error::UnknownField {
            collection: def.name().to_owned(),
            field: field.to_owned(),
        })
}

/// The most values a filter's `in` lists hold together: each is a parameter of one
/// statement, and SQLite takes 32,766 (PostgreSQL 65,535), with room left for the others.
pub const MAX_IN_VALUES: usize = 30_000;

const NUL_REFUSED: &str = "holds a NUL character, which not every database can store";

/// Whether a string or key anywhere in `json` holds a NUL character.
fn json_has_nul(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || json_has_nul(item)),
        _ => false,
    }
}

/// A value written to an int field must fit its [`CollectionDef::int_range`] (filters may
/// compare with any int).
fn check_range(def: &CollectionDef, field: &str, value: &Value) -> Result<()> {
    match def.out_of_range(field, value) {
        Some(problem) => Err(Error::invalid_operation(
            def.name(),
            format!("field `{field}` {problem}"),
        )),
        None => Ok(()),
    }
}

fn check_value(def: &CollectionDef, field: &str, ty: FieldType, value: &mut Value) -> Result<()> {
    value.normalize();
    if let Some(problem) = value_problem(value) {
        return Err(Error::invalid_operation(
            def.name(),
            format!("field `{field}` {problem}"),
        ));
    }
    match value.field_type() {
        Some(found) if found != ty => Err(Error::TypeMismatch {
            collection: def.name().to_owned(),
            field: field.to_owned(),
            expected: ty,
            found: value.describe(),
        }),
        _ => Ok(()),
    }
}

/// Why `value` cannot be stored whatever its field (completing "field `x` …"): a float that
/// is not finite, a NUL character in text or JSON, a datetime outside the years 0000 to 9999.
/// Every write is refused such a value; sync holds a received change that carries one, so
/// that devices agree whatever order they receive changes in.
pub fn value_problem(value: &Value) -> Option<String> {
    match value {
        Value::Float(f) if !f.is_finite() => Some(format!("must hold a finite float, got {f}")),
        // PostgreSQL stores no NUL character in text or JSON; refused everywhere, so that
        // data written on one backend can be synced to any other.
        Value::Text(text) if text.contains('\0') => Some(NUL_REFUSED.to_owned()),
        Value::Json(json) if json_has_nul(json) => Some(NUL_REFUSED.to_owned()),
        // Stored as RFC 3339 text on SQLite, which sorts in time order only for 4-digit years.
        Value::DateTime(at) if !(0..=9999).contains(&chrono::Datelike::year(at)) => {
            Some(format!("holds {at}, outside the years 0000 to 9999"))
        }
        _ => None,
    }
}

fn validate_object(
    def: &CollectionDef,
    object: &mut Object,
    stage: Stage,
    filled: &HashSet<String>,
) -> Result<()> {
    for field in filled {
        field_type(def, field)?;
    }
    let mut required_present = 0;
    // A one-field UUID key may be left out of an entering create, or null: the UUID key
    // middleware fills it.
    let auto_pk = (stage == Stage::Entry && def.has_uuid_pk()).then(|| def.pk_fields()[0].as_str());
    for (field, value) in object.iter_mut() {
        let (ty, optional) = field_type(def, field)?;
        check_value(def, field, ty, value)?;
        check_range(def, field, value)?;
        if value.is_null() {
            if !optional && !filled.contains(field) && auto_pk != Some(field.as_str()) {
                return Err(missing(def, field));
            }
        } else if !optional {
            required_present += 1;
        }
    }
    if required_present == def.fields().iter().filter(|f| !f.optional).count() {
        return Ok(());
    }
    // Some required field is absent: fine only for a key still to be filled in.
    for f in def.fields() {
        let present = object.get(&f.name).is_some_and(|v| !v.is_null());
        if !f.optional && !present && auto_pk != Some(f.name.as_str()) && !filled.contains(&f.name)
        {
            return Err(missing(def, &f.name));
        }
    }
    Ok(())
}

fn missing(def: &CollectionDef, field: &str) -> Error {
    Error::MissingField {
        collection: def.name().to_owned(),
        field: field.to_owned(),
    }
}

fn validate_changes(
    def: &CollectionDef,
    changes: &mut Object,
    filled: &HashSet<String>,
) -> Result<()> {
    if changes.is_empty() && filled.is_empty() {
        return Err(Error::invalid_operation(
            def.name(),
            "an update needs at least one change",
        ));
    }
    for (field, value) in changes.iter_mut() {
        let (ty, optional) = field_type(def, field)?;
        if def.pk_fields().contains(field) {
            return Err(Error::invalid_operation(
                def.name(),
                format!("primary-key field `{field}` cannot be updated"),
            ));
        }
        check_value(def, field, ty, value)?;
        check_range(def, field, value)?;
        if value.is_null() && !optional {
            return Err(missing(def, field));
        }
    }
    for field in filled {
        if def.pk_fields().contains(field) {
            return Err(Error::invalid_operation(
                def.name(),
                format!("primary-key field `{field}` cannot be updated"),
            ));
        }
        field_type(def, field)?;
    }
    Ok(())
}

fn validate_pk(def: &CollectionDef, pk: &mut Pk) -> Result<()> {
    let fields = def.pk_fields();
    if pk.0.len() != fields.len() {
        return Err(Error::invalid_operation(
            def.name(),
            format!(
                "its primary key has {} field(s), the key given has {}",
                fields.len(),
                pk.0.len()
            ),
        ));
    }
    for (field, value) in fields.iter().zip(pk.0.iter_mut()) {
        let (ty, _) = field_type(def, field)?;
        if value.is_null() {
            return Err(missing(def, field));
        }
        check_value(def, field, ty, value)?;
    }
    Ok(())
}

fn validate_filter(def: &CollectionDef, filter: &mut Filter) -> Result<()> {
    let mut in_values = 0;
    for condition in &mut filter.conditions {
        let (ty, _) = field_type(def, &condition.field)?;
        refuse_json(def, &condition.field, ty, "filtered on")?;
        if let Predicate::In(values) = &condition.predicate {
            in_values += values.len();
            if in_values > MAX_IN_VALUES {
                return Err(Error::invalid_operation(
                    def.name(),
                    format!(
                        "a filter's `in` lists take at most {MAX_IN_VALUES} values in all \
                         (each is one parameter of the statement): split the query"
                    ),
                ));
            }
        }
        let null_allowed = matches!(condition.predicate, Predicate::Eq(_) | Predicate::Ne(_));
        for value in condition.predicate.operands_mut() {
            if value.is_null() && !null_allowed {
                return Err(Error::invalid_operation(
                    def.name(),
                    format!(
                        "field `{}` cannot be compared with null except by eq or ne",
                        condition.field
                    ),
                ));
            }
            check_value(def, &condition.field, ty, value)?;
        }
    }
    Ok(())
}

/// JSON documents have no order or equality that every database agrees on.
fn refuse_json(def: &CollectionDef, field: &str, ty: FieldType, what: &str) -> Result<()> {
    if ty == FieldType::Json {
        return Err(Error::invalid_operation(
            def.name(),
            format!("json field `{field}` cannot be {what}"),
        ));
    }
    Ok(())
}

fn validate_query(def: &CollectionDef, query: &mut Query) -> Result<()> {
    validate_filter(def, &mut query.filter)?;
    for order in &query.order {
        let (ty, _) = field_type(def, &order.field)?;
        refuse_json(def, &order.field, ty, "ordered by")?;
    }
    if query.limit.is_some_and(|l| l > i64::MAX as u64) || query.skip > i64::MAX as u64 {
        return Err(Error::invalid_operation(
            def.name(),
            "limit and skip must fit in an i64",
        ));
    }
    Ok(())
}
