"""A small French test collection: resources, queries and judgments written for the analysis.

The queries ask in the words people type: inflected forms the resources do not use ("journaux"
for "journal", "calculons" for "calculer"), no accents ("theoreme", "electricite"), elisions
("l'algèbre", "d'équations") and the stop words of a French sentence. A query's relevant
resources are its topic's; every other resource is judged not relevant.
"""

from __future__ import annotations

from shared.records import Resource

TOPICS: dict[str, list[tuple[str, str]]] = {
    "algebre": [
        ("Introduction à l'algèbre linéaire", "Les matrices, les vecteurs et les systèmes d'équations "
         "linéaires, résolus pas à pas par le pivot de Gauss."),
        ("Déterminant d'une matrice", "Calculer le déterminant d'une matrice carrée et savoir si elle est "
         "inversible."),
        ("Espaces vectoriels", "Bases, dimension et applications linéaires d'un espace vectoriel."),
    ],
    "geometrie": [
        ("Le théorème de Pythagore", "Démontrer le théorème dans un triangle rectangle et l'appliquer "
         "à des problèmes de longueur."),
        ("Géométrie du cercle", "Le rayon, le diamètre, la corde et l'angle inscrit dans un cercle."),
        ("Triangles semblables", "Reconnaître des triangles semblables et utiliser le théorème de Thalès."),
    ],
    "probabilites": [
        ("Probabilités pour débutants", "Lancer un dé, tirer une carte: l'événement, sa probabilité et "
         "l'univers des possibles."),
        ("La loi binomiale", "Répéter une épreuve de Bernoulli et calculer la probabilité de k succès."),
        ("Probabilité conditionnelle", "Arbre pondéré, formule de Bayes et événements indépendants."),
    ],
    "statistiques": [
        ("Statistique descriptive", "Moyenne, médiane et écart-type d'une série statistique."),
        ("Représenter des données", "Histogrammes, diagrammes en boîte et nuages de points."),
        ("Échantillonnage", "Intervalle de fluctuation et estimation d'une proportion."),
    ],
    "chimie": [
        ("Réactions chimiques", "Équilibrer une réaction chimique et suivre l'avancement des réactifs."),
        ("La chimie organique", "Les molécules du carbone: alcanes, alcools et groupes caractéristiques."),
        ("Acides et bases", "Le pH, les couples acide-base et le titrage d'une solution."),
    ],
    "electricite": [
        ("Électricité: le circuit électrique", "Le générateur, les récepteurs et le sens du courant dans "
         "un circuit."),
        ("Tension et intensité", "Mesurer une tension avec un voltmètre et une intensité avec un "
         "ampèremètre."),
        ("La loi d'Ohm", "La résistance électrique et la relation entre tension et intensité."),
    ],
    "histoire": [
        ("La Révolution française", "La prise de la Bastille, la Déclaration des droits de l'homme et la "
         "fin de la monarchie."),
        ("Napoléon et l'Empire", "Le Consulat, le Code civil et les guerres de l'Empire."),
        ("La monarchie absolue", "Louis XIV, la cour de Versailles et le pouvoir du roi."),
    ],
    "biologie": [
        ("La cellule", "Le noyau, la membrane et le cytoplasme: l'unité du vivant."),
        ("L'ADN et la génétique", "La molécule d'ADN, les gènes et la transmission des caractères "
         "héréditaires."),
        ("La division cellulaire", "La mitose et la méiose: comment une cellule se divise."),
    ],
    "programmation": [
        ("Programmer en Python", "Les variables, les boucles et les conditions d'un premier programme."),
        ("Écrire des fonctions", "Définir une fonction, ses paramètres et sa valeur de retour."),
        ("Les listes en Python", "Parcourir une liste, trier ses éléments et compter les valeurs."),
    ],
    "presse": [
        ("Lire un journal", "La une, l'éditorial et le fait divers: comment se compose un journal."),
        ("Le métier de journaliste", "Enquêter, vérifier une source et écrire un article de presse."),
        ("L'histoire de la presse écrite", "Du premier journal imprimé aux quotidiens régionaux."),
    ],
    "animaux": [
        ("Le monde animal", "Classer un animal: vertébré ou invertébré, mammifère, oiseau ou poisson."),
        ("L'animal et son milieu", "Comment chaque animal s'adapte au froid, à la chaleur et à l'eau."),
        ("Nourrir un animal de la ferme", "Le régime alimentaire de la vache, du cheval et de la poule."),
    ],
    "calcul": [
        ("Calcul mental", "Calculer vite de tête: additionner, soustraire et multiplier sans poser "
         "l'opération."),
        ("Le calcul des dérivées", "Dériver une fonction: la dérivée d'un produit et d'un quotient."),
        ("Calcul intégral", "La primitive d'une fonction et le calcul d'une aire sous une courbe."),
    ],
}

QUERIES: dict[str, tuple[str, str]] = {
    "q01": ("l'algèbre des systèmes d'équations", "algebre"),
    "q02": ("equations lineaires et matrices", "algebre"),
    "q03": ("theoreme de pythagore", "geometrie"),
    "q04": ("les triangles et les cercles en geometrie", "geometrie"),
    "q05": ("probabilites d'un evenement", "probabilites"),
    "q06": ("calculer des probabilités conditionnelles", "probabilites"),
    "q07": ("les statistiques et la médiane", "statistiques"),
    "q08": ("les réactions de la chimie", "chimie"),
    "q09": ("electricite et circuits electriques", "electricite"),
    "q10": ("mesurer les tensions", "electricite"),
    "q11": ("la revolution et la monarchie", "histoire"),
    "q12": ("les cellules et leur division", "biologie"),
    "q13": ("programmer des fonctions", "programmation"),
    "q14": ("les journaux et les journalistes", "presse"),
    "q15": ("les animaux de la ferme", "animaux"),
    "q16": ("calculons les dérivées", "calcul"),
}


def resources(language: str = "fr") -> list[Resource]:
    """The collection's resources, every one in `language` (French: the collection's)."""
    return [Resource(id=f"fr-{topic}-{n}", title=title, description=description, subject=topic,
                     level=("beginner", "intermediate", "advanced")[n], type="course", language=language)
            for topic, items in TOPICS.items() for n, (title, description) in enumerate(items)]


def judgments() -> dict[str, dict[str, int]]:
    """Query id -> the ids of its relevant resources (grade 1)."""
    return {qid: {f"fr-{topic}-{n}": 1 for n in range(len(TOPICS[topic]))}
            for qid, (_, topic) in QUERIES.items()}
