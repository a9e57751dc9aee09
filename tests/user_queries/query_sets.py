"""Hand-written query sets about the PostgreSQL manual, shared by the user_queries tests."""

# What a user of the PostgreSQL manual types into a search box...
REAL_KEYWORDS = [
    "pg_hba.conf md5", "vacuum full lock", "jsonb gin index", "pg_dump custom format", "range partitioning",
    "timestamp time zone", "numeric precision scale", "foreign key cascade", "wal archive_command", "multicolumn btree index",
]
# ...what a question generator tends to write about the same pages...
SYNTH_QUESTIONS = [
    "How do I configure md5 password authentication for a database user in the pg_hba.conf file?",
    "Why does VACUUM FULL take an exclusive lock on the table while it rewrites it?",
    "Which operator classes can a GIN index use to speed up queries on jsonb columns?",
    "What are the advantages of the custom archive format when taking a backup with pg_dump?",
    "How can a large table be split into partitions by ranges of a date column?",
    "What is the difference between timestamp with time zone and timestamp without time zone?",
    "How do precision and scale limit the values that a numeric column can store?",
    "What happens to the referencing rows when a row with a foreign key ON DELETE CASCADE is deleted?",
    "How should archive_command be set so that completed WAL segments are copied to the archive?",
    "When is a multicolumn B-tree index used by the planner for conditions on its leading columns?",
]
# ...and keyword queries a well-tuned generator writes for them (paraphrases of the real ones).
SYNTH_KEYWORDS = [
    "pg_hba md5 password auth", "vacuum full exclusive lock", "gin index on jsonb", "pg_dump custom archive",
    "partition by range", "timestamptz time zone", "numeric precision and scale", "on delete cascade foreign key",
    "archive_command wal segments", "btree index multiple columns",
]
REAL_QUESTIONS = [
    "how do I let a remote user log in with a password?",
    "why is vacuum full blocking my queries?",
    "what index should I use for searching inside jsonb documents?",
    "how do I back up one database so I can restore single tables?",
    "how do I split a huge table by month?",
    "should I store timestamps with or without time zone?",
    "what happens if I insert a number with too many decimal places?",
    "how do I delete child rows automatically when the parent is deleted?",
    "how do I copy wal files to another server for point in time recovery?",
    "does the order of columns in an index matter?",
]
CORPUS = [
    "The pg_hba.conf file controls client authentication. The md5 and scram-sha-256 methods send a password.",
    "VACUUM FULL rewrites the entire table into a new disk file and requires an exclusive lock on the table.",
    "The jsonb type supports GIN indexes with the jsonb_ops and jsonb_path_ops operator classes.",
    "pg_dump can write a custom format archive, suitable for input into pg_restore for selective restore.",
    "Range partitioning splits a table into partitions defined by a key column or set of columns, such as dates.",
    "The timestamp with time zone type stores a point in time; timestamp without time zone ignores the time zone.",
    "The precision of a numeric is the total count of digits; the scale is the count of decimal digits in the fraction.",
    "A foreign key with ON DELETE CASCADE deletes referencing rows when the referenced row is deleted.",
    "The archive_command is executed to archive a completed WAL file segment for continuous archiving.",
    "A multicolumn B-tree index is most efficient when there are constraints on the leading columns.",
]


def rows(questions, qtype):
    return [{"id": f"q{i}", "question": q, "query_type": qtype, "segment_ids": [f"c{i}"], "doc_ids": [f"d{i}"],
             "source": {"kind": "llm", "model": "test"}, "quality": {"judge_score": 8}} for i, q in enumerate(questions)]
