//! A first look at storex-core: a registry, a storage with the UUID key middleware on the
//! in-memory backend, a batch with a placeholder, finds with filters and order, and a
//! refused operation. Run with `cargo run -p storex-core --example quickstart`.

use storex_core::{
    object, BatchStep, CollectionDef, FieldType, Filter, MemoryBackend, Operation, Query, Registry,
    Replacement, Storage, UuidPkMiddleware,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> storex_core::Result<()> {
    let registry = Registry::builder()
        .collection(
            CollectionDef::new("notebook")
                .field("id", FieldType::Uuid)
                .field("name", FieldType::Text)
                .primary_key(["id"]),
        )
        .collection(
            CollectionDef::new("note")
                .field("id", FieldType::Uuid)
                .field("notebook_id", FieldType::Uuid)
                .field("title", FieldType::Text)
                .optional_field("stars", FieldType::Int)
                .primary_key(["id"])
                .index(["notebook_id"])
                .child_of("notebook", "notebook_id"),
        )
        .build()?;

    let storage = Storage::builder(registry, MemoryBackend::new())
        .with(UuidPkMiddleware::new())
        .build()
        .await?;

    // A notebook and its notes in one atomic batch: the notes take the notebook's new key.
    let mut steps = vec![BatchStep::new(Operation::create(
        "notebook",
        object! { "name" => "groceries" },
    ))
    .placeholder("book")];
    for (title, stars) in [("milk", 3), ("eggs", 5), ("bread", 1)] {
        steps.push(
            BatchStep::new(Operation::create(
                "note",
                object! { "title" => title, "stars" => stars },
            ))
            .replace(Replacement::field("notebook_id", "book")),
        );
    }
    let outcomes = storage.batch(steps).await?;
    println!("batch applied {} steps atomically", outcomes.len());

    let starred = storage
        .find_many(
            "note",
            Query::new(Filter::all().gte("stars", 3)).order_desc("stars"),
        )
        .await?;
    for note in &starred {
        println!(
            "starred: {} ({} stars)",
            note["title"].as_text().unwrap_or("?"),
            note["stars"].as_int().unwrap_or(0)
        );
    }

    let updated = storage
        .update_where(
            "note",
            Filter::all().lt("stars", 3),
            object! { "stars" => 3 },
        )
        .await?;
    println!("raised {updated} note(s) to 3 stars");

    match storage.create("note", object! { "title" => 42 }).await {
        Ok(_) => println!("unexpected: a bad note was accepted"),
        Err(e) => println!("refused as expected: {e}"),
    }
    println!(
        "notes stored: {}",
        storage.count("note", Filter::all()).await?
    );
    Ok(())
}
