"""Every prompt SCALE sends, as plain constants.

Prompts of one problem share their prefix (system message, problem, solved sub-problems) and
put the varying instruction last, so vLLM's automatic prefix caching reuses the KV cache
across consecutive calls.
"""

# Sent only when the run's ``system_message`` is set to it: by default no call of any method carries
# a system message, as in the paper's prompts (``--system-message`` gives every method the same one).
SYSTEM = "You are an expert competition mathematician. Be rigorous and concise."

PROBLEM = "Problem:\n{problem}\n"

# How a sub-problem appears, both while current and later in the history, so the text of
# sub-problem i is a shared prefix of its solve call and the next assessment.
SUBPROBLEM_HEADER = "\n### Sub-problem {number} of {total}\n{text}\n"
SOLUTION = "Solution:\n{solution}\n"

# Decomposition rules of the paper's authors: plan, don't solve; name what is introduced; build in order.
DECOMPOSE = (
    "\nDecompose this problem into a short sequence of sub-problems that, solved in order, "
    "lead to the answer. Do not solve anything here and give no numerical results: each "
    "sub-problem states what to find or establish, not its value. When a sub-problem introduces "
    "a new quantity, name it explicitly (e.g. \"let r be the radius of ...\") so later "
    "sub-problems can refer to it. Each sub-problem builds on the ones before it; the last "
    "sub-problem asks for the final answer of the original problem. Use between 2 and "
    "{max_subproblems} sub-problems.\n"
    'Respond with JSON only: {{"subproblems": ["...", "..."]}}'
)

# Q(D_j, P) of Eq. 2: the paper's four criteria, plus simplicity as in the authors' code.
SELECT = (
    "\nHere are {count} candidate decompositions of this problem into sub-problems.\n"
    "{candidates}\n"
    "Compare the candidate decompositions on these criteria: logical correctness (every step "
    "is valid and the order works), clarity (each sub-problem is unambiguous), completeness "
    "(together they reach the final answer, nothing missing), relevance (every sub-problem "
    "serves the final answer), and simplicity (no needless steps). Choose the best one.\n"
    'Respond with JSON only: {{"choice": <number of the best candidate, 1 to {count}>}}'
)
CANDIDATE = "Candidate {number}:\n{steps}\n"

# Eq. 3 on the authors' scale, which Table 2's thresholds τ are calibrated on.
ASSESS = (
    "\nRate the difficulty of sub-problem {number} given the work above, as a number from 0 to 1. "
    "Weigh four factors: computational complexity (how much calculation), conceptual "
    "sophistication (how advanced the mathematics), reasoning depth (how many dependent steps) "
    "and uncertainty (how likely a first attempt goes wrong). Scale: 0 to 0.5 for what a solver "
    "at middle-school level finishes quickly; 0.5 to 1 for what needs extended thinking at "
    "high-school or college level, higher the more it needs.\n"
    'Respond with JSON only: {{"difficulty": <number between 0 and 1>}}'
)

SOLVE = (
    "\nSolve sub-problem {number} using the results above. Reason step by step, showing the "
    "essential steps, and end with its result in \\boxed{{}}."
)
SOLVE_LAST = (
    "\nSolve sub-problem {number}, the last one, using the results above. Reason step by step, "
    "showing the essential steps, and end with the final answer to the original problem in \\boxed{{}}."
)

FORCE_ANSWER = (
    "\nYour reasoning so far (cut off before you finished):\n"
    "{reasoning}\n\n"
    "Based on this reasoning, {instruction}"
)
# The forced answer on the model's own reply: its work so far as a closed think block, ended as
# Qwen3's documented thinking budget ends one; the model continues the message with its answer.
# The think block is in the normal form Qwen3-style templates render ("<think>\n…\n</think>\n\n"),
# so vLLM's continue_final_message finds the message in the rendered chat.
FORCE_CONTINUATION = "<think>\n{work}\n</think>\n\n"
FORCE_END = "\n\nConsidering the limited time, I have to give the solution based on the thinking directly now."
FORCE_SUBPROBLEM = "write the solution of sub-problem {number} concisely and end with its result in \\boxed{{}}."
FORCE_FINAL = "write the final answer concisely and put it within \\boxed{}."

COT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

TRUNCATED = "\n[…]\n"
RESULT_ONLY = "Result: \\boxed{{{result}}}"
