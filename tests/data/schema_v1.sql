-- The atlas schema at version 1 (atlas/store/schema.py TABLES before commit 029bb7d), kept to test migration.
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS saes (
    sae_id VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,
    hook VARCHAR NOT NULL,
    site VARCHAR,
    layer INTEGER NOT NULL,
    d_in INTEGER NOT NULL,
    d_sae INTEGER NOT NULL,
    arch VARCHAR NOT NULL,
    k INTEGER,
    seed INTEGER,
    dataset VARCHAR,
    stack VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    neuronpedia_id VARCHAR,
    index_file VARCHAR,
    index_factory VARCHAR,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS features (
    sae_id VARCHAR NOT NULL,
    feature INTEGER NOT NULL,
    dec_norm FLOAT NOT NULL,
    threshold FLOAT,
    density FLOAT,
    max_act FLOAT,
    label VARCHAR
);

CREATE TABLE IF NOT EXISTS matches (
    sae_a VARCHAR NOT NULL,
    feature_a INTEGER NOT NULL,
    sae_b VARCHAR NOT NULL,
    feature_b INTEGER NOT NULL,
    method VARCHAR NOT NULL,
    score FLOAT NOT NULL,      -- cosine / correlation (higher is better); for decoder_mse the MSE (lower is better)
    rank SMALLINT NOT NULL,    -- 1 = feature_a's best candidate in sae_b
    assigned BOOLEAN NOT NULL, -- in the one-to-one assignment of the pair
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS pair_stats (
    sae_a VARCHAR NOT NULL,
    sae_b VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    n_a INTEGER NOT NULL,
    n_b INTEGER NOT NULL,
    n_assigned INTEGER NOT NULL,
    n_matched INTEGER NOT NULL,   -- assigned with score at least tau (at most tau for decoder_mse)
    matched_frac DOUBLE NOT NULL, -- n_matched / n_a
    mean_score DOUBLE,            -- over assigned pairs
    median_score DOUBLE,
    mse_after_perm DOUBLE,        -- mean squared error of (folded) decoder rows over assigned pairs
    identity_frac DOUBLE,         -- assigned pairs with feature_a = feature_b
    tau DOUBLE NOT NULL,
    score_hist DOUBLE[],          -- counts of assigned scores in 20 equal bins over [hist_lo, hist_hi]
    hist_lo DOUBLE,
    hist_hi DOUBLE,
    params_hash VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS correlations (
    sae_a VARCHAR NOT NULL, feature_a INTEGER NOT NULL,
    sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    pearson FLOAT NOT NULL, p_b_given_a FLOAT, jaccard FLOAT, n_tokens BIGINT NOT NULL,
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS compositions (
    sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    kind VARCHAR NOT NULL,        -- AND | OR | PASS
    parents INTEGER[] NOT NULL, sae_a VARCHAR NOT NULL, score FLOAT NOT NULL,
    run_id VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    params JSON,
    versions JSON,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL       -- running | ok | interrupted
);
