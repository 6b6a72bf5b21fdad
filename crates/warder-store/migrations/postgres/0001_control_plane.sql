CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE model_versions (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL REFERENCES models(id),
    upstream_url TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    max_concurrency BIGINT,
    input_schema TEXT,
    cache_ttl_s BIGINT,
    response TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX model_versions_model ON model_versions(model_id);

CREATE TABLE environments (
    model_id TEXT NOT NULL REFERENCES models(id),
    name TEXT NOT NULL,
    version_id TEXT NOT NULL REFERENCES model_versions(id),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (model_id, name)
);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    rate_limit_per_second DOUBLE PRECISION,
    burst BIGINT,
    daily_calls BIGINT,
    monthly_calls BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    model_id TEXT NOT NULL REFERENCES models(id),
    policy_id TEXT REFERENCES policies(id),
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, model_id)
);

CREATE TABLE usage_daily (
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    day TEXT NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (key_id, model_id, day)
);
CREATE INDEX usage_daily_user ON usage_daily(user_id, day);
