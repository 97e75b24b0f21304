//! Table definitions mirrored from `migrations/`.

diesel::table! {
    users (id) {
        id -> Unsigned<BigInt>,
        username -> Varchar,
        password_hash -> Varchar,
        is_admin -> Bool,
        created_at -> Datetime,
    }
}

diesel::table! {
    devices (id) {
        id -> Unsigned<BigInt>,
        device_id -> Varchar,
        owner_id -> Unsigned<BigInt>,
        name -> Varchar,
        attributes_json -> Text,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    readings (device_pk, metric, ts_us) {
        device_pk -> Unsigned<BigInt>,
        metric -> Varchar,
        ts_us -> BigInt,
        value -> Double,
    }
}

diesel::joinable!(devices -> users (owner_id));
diesel::joinable!(readings -> devices (device_pk));

diesel::table! {
    device_metrics (device_pk, metric) {
        device_pk -> Unsigned<BigInt>,
        metric -> Varchar,
    }
}

diesel::joinable!(device_metrics -> devices (device_pk));
diesel::allow_tables_to_appear_in_same_query!(users, devices, readings, device_metrics);
