//! The app of the integration tests: a SeaORM `note` entity and its SQLite file.

#![allow(dead_code, unreachable_pub)] // SeaORM entities must be `pub`; each test uses its part.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Schema};

/// The app's one entity.
pub mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub title: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The app's own data layer: a SQLite file and its table.
pub async fn app_db(path: &std::path::Path) -> DatabaseConnection {
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("connect");
    let mut create = Schema::new(db.get_database_backend()).create_table_from_entity(note::Entity);
    db.execute(create.if_not_exists())
        .await
        .expect("create table");
    db
}
