"""The fixed capability taxonomy of InferenceDynamics and the domain names used to label clusters.

Capabilities are recognised from embeddings by similarity to these descriptions (a zero-shot
classifier whose prototype vectors are stored in the profile file); knowledge clusters are named
after the nearest domain name, for reports only.
"""

CAPABILITIES: dict[str, tuple[str, ...]] = {
    "reasoning": (
        "Solve this logic puzzle step by step and deduce the answer.",
        "Work out the math word problem: compute how many are left after each step.",
        "Prove the statement or calculate the value using multi-step reasoning.",
    ),
    "comprehension": (
        "Read the passage and answer the question about what it says.",
        "Summarize the following text and explain its main idea.",
        "According to the paragraph above, which statement is true?",
    ),
    "instruction_following": (
        "Write a sentence that uses all of the following words, in under twenty words.",
        "Respond only in JSON with the keys name and age, no extra text.",
        "Rewrite the text in a formal tone, keep it to three bullet points.",
    ),
    "agentic": (
        "Plan the sequence of tool calls needed to book a flight and a hotel.",
        "You are an agent: decide which action to take next given the observation.",
        "Break the task into subtasks and choose the right tool for each.",
    ),
    "knowledge_retrieval": (
        "Who was the president of the country in 1962?",
        "What is the capital of this region and which river runs through it?",
        "Which of the following facts about the chemical element is correct?",
    ),
    "coding": (
        "Write a Python function that returns the sorted list of unique elements.",
        "Fix the bug in this code and explain the error.",
        "def solve(nums: list[int]) -> int: complete the implementation.",
    ),
    "multilingual": (
        "Translate the following sentence into French and German.",
        "请用中文回答下面的问题。",
        "Responde en español: ¿cuál es la respuesta correcta?",
    ),
}

DOMAINS: tuple[str, ...] = (
    "arithmetic", "algebra", "geometry", "probability and statistics", "calculus",
    "logic puzzles", "physics", "chemistry", "biology", "medicine", "psychology",
    "computer science", "programming", "software engineering", "data science",
    "history", "geography", "politics", "law", "economics", "finance", "business",
    "philosophy", "religion", "literature", "linguistics", "language translation",
    "art and music", "film and television", "sports", "everyday commonsense",
    "food and cooking", "travel", "education", "engineering", "astronomy",
    "earth science", "environment", "technology", "trivia and general knowledge",
    "creative writing", "social sciences", "ethics", "health and fitness",
)
