"""The pure parts of the configuration database: the value checks of its columns, the schema
(tables, DDL, triggers), the rolling checksum's row hash, the errors and the result records.
No SQLite, files or clocks here."""
