"""Whether a statement provably leaves nothing on its session: the rule that decides a connection's reset.

`leaves_nothing(sql)` is True only for what the kit can prove leaves no session state: statements
(each of them, where `;` separates several) with no comment, each starting with a data command
(SELECT, INSERT, UPDATE, DELETE, WITH, VALUES, TABLE) or with transaction control whose effect ends
with the transaction (SAVEPOINT, SET LOCAL ...), that call no function outside `FUNCTIONS` (pure
functions, and reads of state) and select INTO nothing. Everything else is False: an unknown
function, a comment (`/* c */ SET ...`), a second statement that is not clean (`SELECT 1; SET ...`),
any spelling of SET, set_config, a temporary table, an advisory lock, dollar quoting or a backslash.
The rule fails closed: a statement it cannot prove clean costs its connection a reset (DISCARD ALL)
before the next borrower gets it, never a leak.

It reads the statement's text as the server will (string literals, quoted identifiers), so a value
inside a literal never counts as a call, and a quoted or schema-qualified name still does
(`"set_config"(...)`, `pg_catalog.set_config(...)`). Parameters are values, never SQL. Pure, cached by
text (the same statements come back), no server needed.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import cast

# Data commands, and transaction control whose effect ends with the transaction.
FIRST_WORDS = frozenset({"select", "insert", "update", "delete", "with", "values", "table", "show", "explain",
                         "savepoint",
                         "release", "rollback", "commit", "end", "abort", "begin", "start"})
SET_FORMS = frozenset({"local", "transaction", "constraints"})  # SET LOCAL / TRANSACTION / CONSTRAINTS
# Words SQL's grammar puts before "(" that are no call.
KEYWORDS = frozenset("""
all and any array as between by case cast coalesce conflict cross cube distinct do else end except exists explain
extract filter for from full greatest group grouping having ilike in inner intersect is join lateral least like limit
not nullif offset on only or order over overlay partition position primary returning rollup row rows select set
sets similar some substring then trim union using values when where window with within
""".split())
# Type names that take a modifier: `varchar(20)`, `numeric(10, 2)`, `vector(3)`.
TYPES = frozenset("""
bit char character decimal float halfvec interval numeric sparsevec time timestamp timestamptz varbit varchar
vector varying
""".split())
# Functions that change nothing on the session: pure ones, and reads of state.
FUNCTIONS = frozenset("""
abs age array_agg array_append array_length array_position array_positions array_prepend array_remove
array_to_string avg binary_quantize bool_and bool_or btrim cardinality ceil ceiling char_length
character_length concat concat_ws cosine_distance count cume_dist current_setting date_part date_trunc
decode dense_rank encode every exp first_value floor format gen_random_uuid generate_series
hamming_distance inner_product jaccard_distance json_agg json_build_array json_build_object
json_object_agg jsonb_agg jsonb_array_elements jsonb_array_elements_text jsonb_array_length
jsonb_build_array jsonb_build_object jsonb_each jsonb_each_text jsonb_extract_path jsonb_extract_path_text
jsonb_object_agg jsonb_object_keys jsonb_set jsonb_strip_nulls jsonb_typeof l1_distance l2_distance
l2_norm l2_normalize lag last_value lead left length ln log lower lpad ltrim make_date make_interval
make_timestamptz max md5 min mod now nth_value ntile octet_length percent_rank percentile_cont
percentile_disc pg_advisory_xact_lock pg_advisory_xact_lock_shared pg_backend_pid pg_column_size
pg_current_wal_insert_lsn pg_current_wal_lsn pg_get_constraintdef pg_get_indexdef pg_get_triggerdef
pg_get_viewdef pg_has_role pg_indexes_size pg_is_in_recovery pg_last_wal_replay_lsn pg_relation_size
pg_size_pretty pg_sleep pg_table_size pg_total_relation_size pg_try_advisory_xact_lock
pg_try_advisory_xact_lock_shared pg_wal_lsn_diff phraseto_tsquery plainto_tsquery power quote_ident quote_literal
random rank regexp_match regexp_matches regexp_replace regexp_split_to_array repeat replace reverse right
round row_number row_to_json rpad rtrim setweight sign split_part sqrt statement_timestamp string_agg
string_to_array strpos subvector sum timezone to_char to_date to_json to_jsonb to_number to_regclass
to_timestamp to_tsquery to_tsvector transaction_timestamp trunc ts_headline ts_rank ts_rank_cd unnest upper
vector_dims vector_norm version websearch_to_tsquery bit_send halfvec_send sparsevec_send vector_send
current_database current_schema format_type has_table_privilege row_security_active obj_description
col_description
""".split())
_KNOWN_WORDS = FUNCTIONS | KEYWORDS | TYPES
# A literal, a quoted identifier, or one of what ends the proof at once (comments, dollar quoting).
_TOKENS = re.compile(r"""(?P<literal>[EeUuBbXxNn]?'(?:[^']|'')*')|(?P<quoted>"(?:[^"]|"")*")"""
                     r"""|(?P<stop>--|/\*|\$\$|\$[A-Za-z_]\w*\$)""")
_WORDS = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*|\(|\.|[^\sA-Za-z_"(.]+')


@lru_cache(maxsize=4096)
def leaves_nothing(sql: str) -> bool:
    """True only when `sql` provably leaves no session state behind (see the module); False when unsure."""
    text = _without_literals(sql) if "\\" not in sql else None  # a backslash may escape a quote: no proof
    if text is None:
        return False
    pieces = [piece for piece in text.split(";") if piece.strip()]
    return bool(pieces) and all(_one_leaves_nothing(piece) for piece in pieces)


_WRITES = re.compile(r"\b(?:insert|update|delete|merge|copy|call|do|into|lock|create|alter|drop|truncate)\b", re.I)


@lru_cache(maxsize=4096)
def only_reads(sql: str) -> bool:
    """True only when `sql` provably changes nothing: it leaves nothing on the session and writes no row.

    One statement, starting SELECT, WITH, VALUES or TABLE, calling only known functions
    (`leaves_nothing`), with no data-changing word in its code (a CTE that updates, SELECT INTO).
    Running it again can do no harm; anything else is False.
    """
    if not leaves_nothing(sql) or statement_count(sql) != 1:
        return False
    code = code_of(sql)
    words = _WORDS.findall(code) if code is not None else []
    return code is not None and bool(words) and words[0].lower() in ("select", "with", "values", "table") \
        and not _WRITES.search(code)


def _one_leaves_nothing(body: str) -> bool:
    """`leaves_nothing` for one statement, its literals already blanked."""
    words = _WORDS.findall(body)
    if not words:
        return False
    first = words[0].lower()
    if first == "set":
        return len(words) > 1 and words[1].lower() in SET_FORMS
    if first not in FIRST_WORDS:
        return False
    if first in ("begin", "start", "commit", "end", "abort", "rollback", "release", "savepoint"):
        return all(w.lower() != "prepared" and w != "(" for w in words)  # COMMIT PREPARED is not a session's
    return _calls_are_known(words, first)


def _without_literals(sql: str) -> str | None:
    """`sql` with each string literal blanked and each quoted identifier kept; None where the proof stops."""
    out, end = [], 0
    for found in _TOKENS.finditer(sql):
        if found.lastgroup == "stop":
            return None
        out.append(sql[end:found.start()])
        out.append("''" if found.lastgroup == "literal" else found.group())
        end = found.end()
    out.append(sql[end:])
    text = "".join(out)
    return None if "'" in text.replace("''", "") or text.count('"') % 2 else text  # an unclosed quote


def _calls_are_known(words: list[str], first: str) -> bool:
    """True when every name before "(" is a known function, keyword or type; INTO only in INSERT INTO."""
    lowered = [word.lower() for word in words]
    for i in range(1, len(words)):
        if lowered[i] == "into" and lowered[i - 1] != "insert":
            return False  # SELECT ... INTO makes a table; INSERT INTO writes rows
        if words[i] == "(" and not _known_call(words, lowered, i - 1):
            return False
    return True


def _known_call(words: list[str], lowered: list[str], at: int) -> bool:
    """Whether the name at `at`, followed by "(", is no call, or a call the rule knows changes nothing."""
    name = words[at]
    if _not_a_call(name, lowered, at):
        return True
    if name.startswith('"'):
        return name.strip('"') in FUNCTIONS  # a quoted name is exactly what it says
    return lowered[at] in _KNOWN_WORDS


def _not_a_call(name: str, lowered: list[str], at: int) -> bool:
    """A parenthesis after a parenthesis, an operator or a value; or a list of columns (INTO t (...), AS x (...))."""
    if name in ("(", ".") or not (name[0].isalpha() or name[0] in '_"'):
        return True
    before = lowered[at - 1] if at >= 1 else ""
    return before in ("into", "as") or (before == "." and at >= 3 and lowered[at - 3] == "into")


_LEX = re.compile(r"""--[^\n]*|/\*|[EeUuBbXxNn]?'|"(?:[^"]|"")*"|\$(?:[A-Za-z_]\w*)?\$|;|[^-/'"$;EeUuBbXxNn]+|.""",
                  re.S)


@lru_cache(maxsize=4096)
def code_of(sql: str) -> str | None:
    """`sql` as code only, read as PostgreSQL reads it: comments blanked, literals, names and dollar bodies emptied.

    Comments (nested `/* */` too), string literals (backslash escapes in E'' ones), quoted names and
    dollar-quoted bodies are read whole, so nothing inside them counts as a `;` or a keyword. None
    when one of them is never closed: a doubt, for the caller to treat as the worst case.
    """
    out, i = [], 0
    while i < len(sql):
        token = cast(re.Match[str], _LEX.match(sql, i)).group()  # always a match: `.` takes any character
        end = _token_end(sql, token, i + len(token))
        if end is None:
            return None
        if token == "/*" or token.startswith("--"):
            out.append(" ")
        elif token.endswith("'") or _is_dollar(token):
            out.append("''")
        elif token.startswith('"'):
            out.append('"x"')  # a quoted name is a name, whatever it spells
        else:
            out.append(sql[i:end])
        i = end
    return "".join(out)


@lru_cache(maxsize=4096)
def statement_count(sql: str) -> int:
    """How many statements `sql` holds, as the server splits them (`;` in its code, `code_of`).

    Text it cannot close counts as two, so a doubt never makes one statement of two.
    """
    if ";" not in sql:
        return 1 if sql.strip() else 0
    code = code_of(sql)
    if code is None:
        return 2
    return sum(1 for piece in code.split(";") if piece.strip())


def _is_dollar(token: str) -> bool:
    """Whether `token` opens a dollar-quoted body (`$$`, `$tag$`; not a parameter such as `$1`)."""
    return len(token) > 1 and token[0] == token[-1] == "$" and not token[1:-1].isdigit()


def _token_end(sql: str, token: str, after: int) -> int | None:
    """Where the token that begins with `token` ends: comments, literals and dollar bodies read whole (None: open)."""
    if token == "/*":
        return _comment_end(sql, after)
    if token.endswith("'"):
        return _literal_end(sql, after, escapes=len(token) == 2 and token[0] in "Ee")
    if _is_dollar(token):
        close = sql.find(token, after)
        return None if close < 0 else close + len(token)
    return after


def _comment_end(sql: str, i: int) -> int | None:
    """The end of a `/*` comment opened before `i`, nested ones included (None: never closed)."""
    depth = 1
    while depth:
        close = sql.find("*/", i)
        if close < 0:
            return None
        nested = sql.find("/*", i, close)
        depth, i = (depth + 1, nested + 2) if nested >= 0 else (depth - 1, close + 2)
    return i


def _literal_end(sql: str, i: int, escapes: bool) -> int | None:
    """The end of a string literal opened before `i` ('' doubles a quote; with `escapes`, a backslash does)."""
    while True:
        close = sql.find("'", i)
        if close < 0:
            return None
        if escapes and _escaped(sql, close):
            i = close + 1
        elif sql.startswith("''", close):
            i = close + 2
        else:
            return close + 1


def _escaped(sql: str, at: int) -> bool:
    """True when the quote at `at` is escaped by an odd run of backslashes before it."""
    run = 0
    while at - run - 1 >= 0 and sql[at - run - 1] == "\\":
        run += 1
    return run % 2 == 1
