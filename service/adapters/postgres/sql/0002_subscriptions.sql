-- Subscriptions belong to billing; this service only reads them to expand a customer.
CREATE TABLE subscriptions (
    id                 text        PRIMARY KEY,
    customer_id        text        NOT NULL REFERENCES customers (id),
    status             text        NOT NULL,
    created            timestamptz NOT NULL DEFAULT now(),
    current_period_end timestamptz
);

CREATE INDEX subscriptions_customer_id_idx ON subscriptions (customer_id, created);
