"""Column names and row statuses shared by every stage: the one place they are spelled."""

# Input / pass-through
ID = "id"
PROMPT = "prompt"  # the text column after reading (renamed from the configured text column)

# Added by the stages
STATUS = "status"
ERROR = "error"
EMBEDDING = "embedding"
QUALITY = "quality"  # list<float32>[M]: predicted quality per model
COST = "cost_matrix"  # list<float32>[M]: predicted cost per model (NaN: model cannot take the row)
EST_INPUT_TOKENS = "est_input_tokens"
EST_OUTPUT_TOKENS = "est_output_tokens"  # the routed model's predicted answer length (engines start the longest first)
OUTPUT_MATRIX = "output_tokens_matrix"  # list<float32>[M]: predicted answer tokens per model
CAPABILITIES = "capabilities"  # list<string>: the row's top capabilities, most important first
DOMAINS = "domains"  # list<string>: the row's top knowledge domains
HULL = "price_hull"  # list<struct<lam, model>>: the row's walk down its hull (router.budget.Hulls)
MODEL = "model"
PREDICTED_QUALITY = "predicted_quality"
PREDICTED_COST = "predicted_cost"
RESPONSE = "response"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
ACTUAL_COST = "cost"
FINISH_REASON = "finish_reason"
GENERATION_SECONDS = "generation_s"

# Row statuses
OK = "ok"
INVALID_INPUT = "invalid_input"
TOO_LONG = "too_long"
OVER_BUDGET = "over_budget"
GENERATION_ERROR = "generation_error"
# The error of a row the hard budget's ledger refused while answering: its worst case no longer
# fit in what was left. Until the job's last wave such rows are not written but routed again.
REFUSED = "the budget left could not cover this row's worst case (prompt tokens plus max_tokens)"
STATUSES = (OK, INVALID_INPUT, TOO_LONG, OVER_BUDGET, GENERATION_ERROR)

# Columns the output adds to the pass-through ones, in order.
OUTPUT_COLUMNS = (
    MODEL,
    STATUS,
    ERROR,
    PREDICTED_QUALITY,
    PREDICTED_COST,
    RESPONSE,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    ACTUAL_COST,
    FINISH_REASON,
    GENERATION_SECONDS,
    CAPABILITIES,
    DOMAINS,
)
# Working columns dropped before writing.
INTERNAL_COLUMNS = (EMBEDDING, QUALITY, COST, EST_INPUT_TOKENS, HULL, OUTPUT_MATRIX, EST_OUTPUT_TOKENS)
