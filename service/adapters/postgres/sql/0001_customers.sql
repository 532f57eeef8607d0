-- Customers: every field of the public customer object, plus bookkeeping.
CREATE TABLE customers (
    id                    text        PRIMARY KEY,
    created               timestamptz NOT NULL DEFAULT now(),
    delinquent            boolean     NOT NULL DEFAULT false,
    address_city          text,
    address_country       text,
    address_line1         text,
    address_line2         text,
    address_postal_code   text,
    address_state         text,
    description           text,
    email                 text,
    invoice_prefix        text,
    next_invoice_sequence bigint      NOT NULL DEFAULT 1
        CHECK (next_invoice_sequence BETWEEN 1 AND 1000000000),
    -- Highest invoice number already issued; written by invoicing, read by this service.
    last_invoice_sequence bigint      NOT NULL DEFAULT 0 CHECK (last_invoice_sequence >= 0),
    name                  text,
    phone                 text,
    preferred_locales     text[]      NOT NULL DEFAULT '{}',
    tax_exempt            text        NOT NULL DEFAULT 'none'
        CHECK (tax_exempt IN ('exempt', 'none', 'reverse')),
    -- Counts applied updates; the sequence of the customer's events.
    version               bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    updated               timestamptz NOT NULL DEFAULT now(),
    -- Checked at the end of each statement, so one set-based UPDATE may swap prefixes
    -- between customers.
    CONSTRAINT customers_invoice_prefix_key UNIQUE (invoice_prefix) DEFERRABLE INITIALLY IMMEDIATE
);
