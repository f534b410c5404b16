"""Every prompt SCALE sends, as plain constants.

Prompts of one problem share their prefix (system message, problem, solved sub-problems) and
put the varying instruction last, so vLLM's automatic prefix caching reuses the KV cache
across consecutive calls.
"""

SYSTEM = "You are an expert competition mathematician. Be rigorous and concise."

PROBLEM = "Problem:\n{problem}\n"

# How a sub-problem appears, both while current and later in the history, so the text of
# sub-problem i is a shared prefix of its solve call and the next assessment.
SUBPROBLEM_HEADER = "\n### Sub-problem {number} of {total}\n{text}\n"
SOLUTION = "Solution:\n{solution}\n"

DECOMPOSE = (
    "\nDecompose this problem into a short sequence of sub-problems that, solved in order, "
    "lead to the answer. Each sub-problem states what to find or establish, not how to do it; "
    "later sub-problems may use the results of earlier ones; the last sub-problem asks for the "
    "final answer of the original problem. Use between 2 and {max_subproblems} sub-problems.\n"
    'Respond with JSON only: {{"subproblems": ["...", "..."]}}'
)

SELECT = (
    "\nHere are {count} candidate decompositions of this problem into sub-problems.\n"
    "{candidates}\n"
    "Compare the candidate decompositions for logical correctness, clarity, completeness and "
    "relevance to reaching the final answer, and choose the best one.\n"
    'Respond with JSON only: {{"choice": <number of the best candidate, 1 to {count}>}}'
)
CANDIDATE = "Candidate {number}:\n{steps}\n"

ASSESS = (
    "\nRate the difficulty of sub-problem {number} given the work above, from 0 (routine: a "
    "direct computation or a known fact) to 1 (hard: needs careful multi-step reasoning or a "
    "key insight).\n"
    'Respond with JSON only: {{"difficulty": <number between 0 and 1>}}'
)

SOLVE = (
    "\nSolve sub-problem {number} using the results above. Show the essential steps and end "
    "with its result in \\boxed{{}}."
)
SOLVE_LAST = (
    "\nSolve sub-problem {number}, the last one, using the results above. Show the essential "
    "steps and end with the final answer to the original problem in \\boxed{{}}."
)

FORCE_ANSWER = (
    "\nYour reasoning so far (cut off before you finished):\n"
    "{reasoning}\n\n"
    "Based on this reasoning, {instruction}"
)
FORCE_SUBPROBLEM = "write the solution of sub-problem {number} concisely and end with its result in \\boxed{{}}."
FORCE_FINAL = "write the final answer concisely and put it within \\boxed{}."

COT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

TRUNCATED = "\n[…]\n"
RESULT_ONLY = "Result: \\boxed{{{result}}}"
