"""Evidence: what people's actions say about a (query, resource), debiased, one voice per person.

Pure, no I/O: `outcomes.py` classifies what one person did with a shown result (a like, a
dislike, an open and how long they stayed) and says whose voice it is; `clicks.py` estimates
where people look (examination by rank) from the product's own traffic; `judgments.py` turns
impressions and actions into evidence per (query, resource), corrected for position, each person
counted once. The trainer, the aggregator and the reranker read them alike.
"""
