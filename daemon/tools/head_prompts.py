"""The prompts `train-head` asks the trunk, by kind: chat, code, technical questions, lists, multi-turn.

A prompt is a text (one user turn) or a conversation: a list of messages (dicts with `role` and
`content`: a user turn, an assistant turn, a follow-up user turn), which `daemon.engine.reply.user_prompts`
renders with the chat template as it renders a text. Everything here is fixed data, built the same way
every time; the seeded sample a run uses and its held-out split are made in daemon.tools.train_head.

`chat_prompts()` is the first demo head's set (prompt set "v1": 101 topics x 12 kinds of request, chat
only). `head_prompts()` (prompt set "v2") keeps a third of those, spread evenly over topics and
request kinds, and adds code (write, explain or fix Python, JavaScript, shell, SQL), technical
questions, list-style requests and multi-turn conversations, where the first head drafted poorly.
"""

from __future__ import annotations

TOPICS = [
    "the ocean", "black holes", "photosynthesis", "the French Revolution", "Python lists", "binary search",
    "a healthy breakfast", "learning a new language", "climate change", "the immune system", "electric cars",
    "volcanoes", "the history of the internet", "chess", "saving money", "sleep", "coffee", "the Roman Empire",
    "machine learning", "recursion", "growing tomatoes", "the moon landing", "honeybees", "time management",
    "SQL joins", "git branches", "rainbows", "earthquakes", "public speaking", "the water cycle", "Shakespeare",
    "dinosaurs", "how HTTP works", "vaccines", "running a marathon", "baking bread", "the stock market",
    "friendship", "electricity", "Mount Everest", "cats", "the solar system", "writing a resume", "jazz",
    "the human heart", "glaciers", "ancient Egypt", "JavaScript promises", "sorting algorithms", "gardening",
    "meditation", "renewable energy", "the printing press", "bicycles", "octopuses", "the Great Wall of China",
    "regular expressions", "unit testing", "chocolate", "thunderstorms", "negotiating a salary", "the Olympics",
    "opera", "the periodic table", "bridges", "rainforests", "linked lists", "the Renaissance", "yoga",
    "airplanes", "coral reefs", "the Cold War", "Docker containers", "first aid", "soap bubbles", "penguins",
    "budget travel", "the speed of light", "origami", "the Silk Road", "camping", "Linux file permissions",
    "composting", "wolves", "the metric system", "podcasting", "DNA", "deserts", "learning to swim",
    "the Industrial Revolution", "cooking rice", "tides", "recycling", "the violin", "pyramids",
    "team meetings", "sharks", "memory and forgetting", "the Amazon river", "knitting", "lighthouses",
]
TASKS = [
    "Explain {} to a ten-year-old.", "Write a short poem about {}.", "Give me three interesting facts about {}.",
    "Summarize the key ideas of {} in one paragraph.", "Write a short story that involves {}.",
    "What should a beginner know about {}?", "Describe {} in simple terms.", "List five tips related to {}.",
    "Why does {} matter?", "Write a friendly email to a colleague about {}.",
    "What are common misconceptions about {}?", "Answer briefly: what is {}?",
]

PYTHON_FUNCTIONS = [
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number",
    "counts the words in a text file", "merges two sorted lists into one sorted list",
    "removes duplicates from a list while keeping the order", "flattens a nested list",
    "converts Celsius to Fahrenheit", "finds the largest number in a list without using max()",
    "reverses the order of the words in a sentence", "checks whether a number is prime",
    "computes the factorial of n recursively", "returns the most common element of a list",
    "validates an email address with a regular expression", "reads a CSV file and returns its rows as dictionaries",
    "groups a list of words by their first letter", "returns the average of a list of numbers, or None if it is empty",
    "checks whether two strings are anagrams", "transposes a matrix given as a list of lists",
    "sorts a list of dictionaries by a given key", "counts the vowels in a string",
    "returns the elements two lists have in common", "generates all permutations of a string",
    "converts a binary string to an integer", "finds the second largest number in a list",
    "splits a list into chunks of size n", "returns the greatest common divisor of two numbers",
    "capitalizes the first letter of every word in a sentence", "checks whether the brackets in a string are balanced",
    "implements binary search on a sorted list", "returns the running totals of a list of numbers",
    "retries a failing function call up to three times", "parses a date like 2024-05-17 into a date object",
    "computes the Levenshtein distance between two strings", "lists every .txt file under a directory",
    "caches the results of an expensive function", "converts a Roman numeral to an integer",
    "returns the n largest files in a folder", "counts how often each character occurs in a string",
    "checks whether a year is a leap year", "writes a list of dictionaries to a JSON file",
]
PYTHON_TASKS = ["Write a Python function that {}.", "Write a Python function that {}, with type hints and a docstring."]
JAVASCRIPT_FUNCTIONS = [
    "debounces another function", "fetches JSON from a URL and handles errors", "deep-clones an object",
    "returns the unique values of an array", "formats a number as a price in dollars",
    "counts the occurrences of each word in a string", "checks whether an object is empty",
    "sorts an array of objects by their date field", "converts a query string into an object",
    "waits for a given number of milliseconds using a promise", "capitalizes every word in a string",
    "finds the longest string in an array", "groups an array of objects by a property",
    "throttles a scroll event handler", "validates a password: 8+ characters, a digit and an uppercase letter",
]
SHELL_TASKS = [
    "finds all files larger than 100 MB in my home directory", "counts the lines in every .py file in a folder",
    "replaces 'foo' with 'bar' in every .txt file of a directory", "shows the ten largest directories here",
    "lists the processes using the most memory", "renames every .jpeg file in a folder to .jpg",
    "compresses a folder into a tar.gz archive", "shows which process is listening on port 8080",
    "follows the last 50 lines of a log file", "deletes files older than 30 days in /tmp",
    "counts the unique IP addresses in an nginx access log", "creates a git branch and pushes it to origin",
    "downloads a file with curl and checks its SHA-256 checksum", "finds every TODO comment in a project",
    "shows the disk usage of each mounted file system",
]
SQL_TASKS = [
    "returns the total amount per customer", "finds the customers with more than five orders",
    "returns the ten most recent orders", "computes the revenue per month in 2023",
    "finds the orders above the average amount", "returns the customers who never ordered anything",
    "deletes duplicate orders, keeping the one with the lowest id",
    "ranks customers by total spend with a window function",
    "returns the second highest order amount", "counts the orders per day over the last seven days",
    "sets the amount of order 42 to 99.50", "creates an index that speeds up lookups by customer_id",
]
SQL_TABLES = "Tables: customers(id, name, email) and orders(id, customer_id, amount, created_at)."
SNIPPETS_TO_EXPLAIN = [
    "```python\nsquares = [x * x for x in range(10) if x % 2 == 0]\n```",
    "```python\nwith open('data.txt') as f:\n    lines = [line.strip() for line in f if line.strip()]\n```",
    "```python\ndef memo(f):\n    cache = {}\n    def wrapper(n):\n"
    "        if n not in cache:\n            cache[n] = f(n)\n"
    "        return cache[n]\n    return wrapper\n```",
    "```python\ncounts = {}\nfor word in text.split():\n    counts[word] = counts.get(word, 0) + 1\n```",
    "```python\nclass Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
    "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)\n```",
    "```python\nimport asyncio\n\nasync def main():\n    results = await asyncio.gather(fetch(1), fetch(2))\n"
    "    print(results)\n\nasyncio.run(main())\n```",
    "```python\npairs = sorted(scores.items(), key=lambda item: item[1], reverse=True)[:3]\n```",
    "```python\ndef gen(n):\n    for i in range(n):\n        yield i * 2\n```",
    "```javascript\nconst total = items.filter(i => i.active).map(i => i.price).reduce((a, b) => a + b, 0);\n```",
    "```javascript\nfetch('/api/users')\n  .then(response => response.json())\n"
    "  .then(users => console.log(users.length))\n"
    "  .catch(error => console.error(error));\n```",
    "```bash\nfind . -name '*.log' -mtime +7 -exec rm {} \\;\n```",
    "```bash\nfor f in *.csv; do wc -l \"$f\"; done | sort -n\n```",
    "```sql\nSELECT department, COUNT(*) AS people\nFROM employees\nGROUP BY department\nHAVING COUNT(*) > 10;\n```",
    "```python\ntry:\n    value = int(user_input)\nexcept ValueError:\n    value = 0\nfinally:\n    print('done')\n```",
    "```python\nfrom collections import defaultdict\n\ngraph = defaultdict(list)\nfor a, b in edges:\n"
    "    graph[a].append(b)\n    graph[b].append(a)\n```",
]
EXPLAIN_TASKS = ["Explain this code:\n{}", "What does this code do, step by step?\n{}"]
BUGGY_CODE = [
    "```python\ndef average(numbers):\n    return sum(numbers) / len(numbers) - 1\n```",
    "```python\ndef is_even(n):\n    return n % 2 == 1\n```",
    "```python\ndef last_item(items):\n    return items[len(items)]\n```",
    "```python\ndef add_item(item, items=[]):\n    items.append(item)\n    return items\n```",
    "```python\ndef count_down(n):\n    while n > 0:\n        print(n)\n```",
    "```python\ndef read_config(path):\n    f = open(path)\n    return json.load(f)\n```",
    "```python\ndef factorial(n):\n    if n == 0:\n        return 0\n    return n * factorial(n - 1)\n```",
    "```python\nfor i in range(len(names)):\n    if names[i] == '':\n        names.remove(names[i])\n```",
    "```python\ndef greet(name):\n    print('Hello, ' + name + '!'\n```",
    "```python\ntotal = 0\nfor price in ['1.50', '2.25']:\n    total += price\n```",
    "```javascript\nfor (var i = 0; i < 3; i++) {\n  setTimeout(() => console.log(i), 100);\n}\n```",
    "```javascript\nfunction isAdult(age) {\n  if (age = 18) {\n    return true;\n  }\n  return age > 18;\n}\n```",
    "```javascript\nasync function load() {\n  const data = fetch('/data.json');\n  return data.json();\n}\n```",
    "```sql\nSELECT name, COUNT(*) FROM orders;\n```",
    "```bash\nif [ $name == \"admin\" ] then\n  echo \"welcome\"\nfi\n```",
]
FIX_TASKS = ["Fix the bug in this code:\n{}", "This code does not work as intended. What is wrong?\n{}"]

DIFFERENCES = [
    ("a list", "a tuple in Python"), ("TCP", "UDP"), ("a process", "a thread"), ("git merge", "git rebase"),
    ("SQL", "NoSQL databases"), ("HTTP", "HTTPS"), ("the == operator", "the is operator in Python"),
    ("let", "var in JavaScript"), ("a compiler", "an interpreter"), ("RAM", "disk storage"),
    ("an abstract class", "an interface"), ("a stack", "a queue"), ("unit tests", "integration tests"),
    ("Docker images", "containers"), ("authentication", "authorization"), ("IPv4", "IPv6"),
    ("a shallow copy", "a deep copy"), ("GET", "POST requests"), ("concurrency", "parallelism"),
    ("an array", "a linked list"), ("INNER JOIN", "LEFT JOIN"), ("a virtual machine", "a container"),
    ("static typing", "dynamic typing"), ("a library", "a framework"), ("REST", "GraphQL"),
]
HOW_IT_WORKS = [
    "a hash table", "garbage collection in Python", "DNS", "public-key cryptography", "a CPU cache",
    "the TLS handshake", "virtual memory", "a B-tree index in a database", "OAuth login",
    "async and await in Python", "the JavaScript event loop", "gradient descent", "gzip compression",
    "a load balancer", "git's storage of history", "password hashing", "CORS in the browser",
    "a Python decorator", "the Linux boot process", "a neural network's training loop",
]
WHEN_TO_USE = [
    "a generator instead of a list in Python", "a database transaction", "a message queue",
    "multiprocessing instead of threads in Python", "an index on a database column",
    "environment variables for configuration", "TypeScript instead of JavaScript", "a cache in front of a database",
    "a virtual environment", "recursion instead of a loop", "a dataclass in Python", "a set instead of a list",
]
TECHNICAL_QUESTIONS = [
    "Why is my Python script slow, and how can I find out where the time goes?",
    "How do I undo the last git commit but keep my changes?",
    "What is Big O notation? Give examples.", "What happens when I type a URL into my browser and press Enter?",
    "How can I make a REST API in Python?", "What is a race condition, and how do I avoid one?",
    "How do I read a large file in Python without running out of memory?",
    "What is the difference between a 401 and a 403 HTTP status code?",
    "How should I store passwords in a database?", "What is dependency injection?",
    "How do I handle errors in a JavaScript promise chain?", "What is a Python virtual environment for?",
    "Why does 0.1 + 0.2 not equal 0.3 in most programming languages?",
    "How do I write a good unit test?", "What is an API key and how should I keep it safe?",
]

LIST_REQUESTS = [
    "ways to speed up a slow website", "common git commands and what they do", "Python libraries for data analysis",
    "things to check before deploying to production", "habits of good programmers", "ways to reduce stress at work",
    "ideas for a weekend programming project", "questions to ask at the end of a job interview",
    "steps to set up a new Python project", "security mistakes in web applications", "healthy snacks for work",
    "ways to make a presentation clearer", "tips for writing good documentation",
    "Linux commands every beginner should know", "ways to save energy at home", "causes of a memory leak",
    "ways to learn a programming language faster", "things to pack for a weekend hike",
    "signs that code needs refactoring", "cheap dinner ideas for students",
]
LIST_TASKS = ["List five {}.", "Give me a numbered list of seven {}."]
CHECKLISTS = [
    "moving to a new apartment", "releasing a new version of a library", "preparing for a technical interview",
    "backing up a laptop", "setting up SSH keys for GitHub", "reviewing a pull request",
    "planning a birthday party", "starting a vegetable garden", "onboarding a new team member",
    "debugging a failing test", "launching a small website", "preparing for a long flight",
]
PROS_AND_CONS = [
    "working from home", "microservices", "electric cars", "using an ORM", "static typing", "cloud hosting",
    "learning Rust as a first language", "open-plan offices", "solar panels", "a monorepo",
    "writing tests first", "public transport",
]

# (first user turn, the assistant's reply, follow-ups that fit it): combined with the generic follow-ups
CONVERSATIONS = [
    ("What is a Python dictionary?",
     "A dictionary stores key-value pairs. You look values up by key, for example `ages = {'Ann': 31}` and "
     "`ages['Ann']` gives 31. Keys must be hashable, like strings or numbers.",
     ["How do I loop over its keys and values?", "What happens if the key is missing?"]),
    ("Write a Python function that reverses a string.",
     "Here is a simple version:\n\n```python\ndef reverse(text):\n    return text[::-1]\n```\n\n"
     "The slice `[::-1]` walks the string backwards.",
     ["Can you do it without slicing?", "Now make it reverse the words instead of the letters."]),
    ("How do I create a new branch in git?",
     "Use `git checkout -b my-branch` (or `git switch -c my-branch` in newer versions). It creates the "
     "branch and switches to it.",
     ["How do I push it to GitHub?", "And how do I delete it afterwards?"]),
    ("What is the capital of Australia?",
     "The capital of Australia is Canberra, not Sydney as many people think.",
     ["Why was Canberra chosen?", "What is there to see in Canberra?"]),
    ("Can you suggest a name for my cat?",
     "Sure! A few ideas: Luna, Milo, Pepper, Biscuit or Shadow. Tell me about your cat and I can suggest "
     "more fitting ones.",
     ["She is black and very playful.", "Give me some funny names instead."]),
    ("What is a SQL JOIN?",
     "A JOIN combines rows from two tables using a related column, for example orders and customers "
     "matched on `customer_id`.",
     ["Show me an example query.", "What is the difference between INNER and LEFT JOIN?"]),
    ("I want to start running. Any advice?",
     "Start slowly: run three times a week, alternate running and walking, and increase your distance by "
     "about 10% per week. Good shoes help a lot.",
     ["How long until I can run 5 km?", "What should I eat before a run?"]),
    ("Explain what an API is.",
     "An API (application programming interface) is a set of rules that lets one program ask another for "
     "data or actions, for example a weather app asking a server for today's forecast.",
     ["Can you give an example in Python?", "What is a REST API?"]),
    ("Write a haiku about autumn.",
     "Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year breathes slowly.",
     ["Now write one about winter.", "Explain the structure of a haiku."]),
    ("How do I read a file in Python?",
     "Use `open` in a `with` block:\n\n```python\nwith open('notes.txt') as f:\n    text = f.read()\n```\n\n"
     "The file is closed automatically at the end of the block.",
     ["How do I read it line by line?", "And how do I write to a file?"]),
    ("What causes the seasons?",
     "The seasons come from the tilt of Earth's axis, about 23.5 degrees. As Earth orbits the Sun, each "
     "hemisphere takes turns leaning toward it and getting more direct sunlight.",
     ["So why is it not hottest when Earth is closest to the Sun?", "Do other planets have seasons?"]),
    ("What does `ls -la` do?",
     "`ls -la` lists all files in the current directory, including hidden ones (`-a`), in long format "
     "(`-l`) with permissions, owner, size and modification date.",
     ["How do I sort the output by size?", "What do the permission letters mean?"]),
    ("I have a job interview tomorrow. Can you help me prepare?",
     "Of course. Research the company, prepare short stories about your past work, practise answering "
     "common questions out loud, and have two or three questions ready for them.",
     ["What are the most common questions?", "How should I answer 'What is your biggest weakness?'"]),
    ("What is recursion?",
     "Recursion is when a function calls itself to solve a smaller version of the same problem, with a "
     "base case that stops it. Computing a factorial is the classic example.",
     ["Show me the factorial example in Python.", "When is recursion a bad idea?"]),
    ("Can you recommend a good book?",
     "Happy to! If you like fiction, 'The Night Circus' by Erin Morgenstern is a magical read. For "
     "non-fiction, 'Sapiens' by Yuval Noah Harari is very popular.",
     ["I prefer science fiction.", "Something shorter, please."]),
    ("How do I install a Python package?",
     "Use pip: `pip install requests`. It is best to do this inside a virtual environment, created with "
     "`python -m venv .venv` and activated before installing.",
     ["How do I activate the virtual environment on Windows?", "How do I save my dependencies to a file?"]),
    ("What is the difference between weather and climate?",
     "Weather is what the atmosphere does on a given day; climate is the average of the weather in a "
     "place over many years.",
     ["Give me an example.", "How do scientists measure climate?"]),
    ("Write a SQL query that counts users per country.",
     "```sql\nSELECT country, COUNT(*) AS users\nFROM users\nGROUP BY country\nORDER BY users DESC;\n```",
     ["Now only show countries with more than 100 users.", "How would I do this in pandas?"]),
    ("My code says 'IndexError: list index out of range'. What does that mean?",
     "It means you asked for a position the list does not have, for example `items[5]` when the list has "
     "only five elements (positions 0 to 4).",
     ["How do I fix it in a loop?", "How can I check the length first?"]),
    ("Tell me a fun fact.",
     "Octopuses have three hearts and blue blood. Two hearts pump blood to the gills, and the third "
     "pumps it to the rest of the body.",
     ["Tell me another one.", "Why is their blood blue?"]),
    ("What is Docker?",
     "Docker packages an application with everything it needs (libraries, settings, runtime) into a "
     "container, so it runs the same way on any machine.",
     ["How do I write a Dockerfile for a Python app?", "What is docker compose for?"]),
    ("How can I sleep better?",
     "Keep a regular schedule, avoid screens and caffeine late in the day, keep your bedroom dark and "
     "cool, and get some daylight in the morning.",
     ["What if I wake up at night and cannot fall asleep again?", "Is napping during the day bad?"]),
    ("Write a JavaScript function that adds two numbers.",
     "```javascript\nfunction add(a, b) {\n  return a + b;\n}\n```",
     ["Now make it add any number of arguments.", "How would I write it as an arrow function?"]),
    ("What is machine learning?",
     "Machine learning is a way of building programs that learn patterns from examples instead of being "
     "given explicit rules, for example a spam filter trained on labelled emails.",
     ["What is the difference between supervised and unsupervised learning?", "How do I get started?"]),
]
FOLLOW_UPS = [
    "Can you explain that more simply?", "Can you give me an example?", "Thanks! Can you make it shorter?",
    "Why is that?", "Can you put that in a list?", "What would you recommend for a complete beginner?",
]


def chat_prompts() -> list[str]:
    """The first head's prompt set ("v1"): every task about every topic (1212 prompts)."""
    return [task.format(topic) for topic in TOPICS for task in TASKS]


def code_prompts() -> list[str]:
    """Write, explain or fix code: Python, JavaScript, shell, SQL (182 prompts)."""
    return ([task.format(f) for f in PYTHON_FUNCTIONS for task in PYTHON_TASKS]
            + [f"Write a JavaScript function that {f}." for f in JAVASCRIPT_FUNCTIONS]
            + [f"Write a shell command that {t}." for t in SHELL_TASKS]
            + [f"{SQL_TABLES} Write an SQL query that {t}." for t in SQL_TASKS]
            + [task.format(s) for s in SNIPPETS_TO_EXPLAIN for task in EXPLAIN_TASKS]
            + [task.format(b) for b in BUGGY_CODE for task in FIX_TASKS])


def technical_prompts() -> list[str]:
    """Technical questions (92 prompts)."""
    return ([f"What is the difference between {a} and {b}?" for a, b in DIFFERENCES]
            + [f"How does {thing} work?" for thing in HOW_IT_WORKS]
            + [f"Explain briefly how {thing} works." for thing in HOW_IT_WORKS]
            + [f"When should I use {thing}?" for thing in WHEN_TO_USE]
            + TECHNICAL_QUESTIONS)


def list_prompts() -> list[str]:
    """List-style requests (64 prompts)."""
    return ([task.format(thing) for thing in LIST_REQUESTS for task in LIST_TASKS]
            + [f"Make a step-by-step checklist for {thing}." for thing in CHECKLISTS]
            + [f"List the pros and cons of {thing}." for thing in PROS_AND_CONS])


def conversation_prompts() -> list[list[dict]]:
    """A user turn, the assistant's reply and a follow-up: each conversation with its own follow-ups and
    the generic ones (192 conversations)."""
    return [[{"role": "user", "content": first}, {"role": "assistant", "content": reply},
             {"role": "user", "content": follow_up}]
            for first, reply, own in CONVERSATIONS for follow_up in own + FOLLOW_UPS]


def head_prompts() -> dict[str, list]:
    """Prompt set "v2", by kind: a third of the chat prompts (4 request kinds per topic, every kind on
    about 34 topics), then code, technical questions, lists and conversations."""
    chat = [task.format(topic) for t, topic in enumerate(TOPICS) for k, task in enumerate(TASKS) if (t + k) % 3 == 0]
    return {"chat": chat, "code": code_prompts(), "technical": technical_prompts(), "lists": list_prompts(),
            "conversation": conversation_prompts()}
