"""The sample site's WordPress-style REST API: ``/wp-json/wp/v2/posts`` and the ``/wp-json`` index.

The posts are the sample articles as WordPress would send them: ``_embed`` data (author,
featured media, categories and tags), ``per_page``/``page`` with ``X-WP-Total`` and
``X-WP-TotalPages``, ``orderby``/``order``, ``after`` and ``modified_after``, WordPress's date
formats (``date`` in the site's time zone, ``date_gmt`` in UTC, both without an offset) and its
errors (``rest_post_invalid_page_number``, ``rest_invalid_param``, ``rest_no_route``).
:class:`WordPressAPI` builds them once from the site (:mod:`sample.site`) and answers requests;
it imports nothing from the site, which hands it what it needs.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

__all__ = ["CONTENT_TYPE", "SITE_TIMEZONE", "WP_POSTS", "Answer", "WordPressAPI"]

CONTENT_TYPE = "application/json; charset=UTF-8"

# The WordPress-style API: the site's own time zone (WordPress's "date" fields are in it, without
# an offset), its page sizes, and the category a breaking post is filed under.
SITE_TIMEZONE = timezone(timedelta(hours=7), "Asia/Bangkok")
WP_POSTS = "/wp-json/wp/v2/posts"
WP_PER_PAGE = 10
WP_MAX_PER_PAGE = 100
WP_BREAKING_CATEGORY = "Breaking News"
WP_STUDY_TAG = "Research"
_WP_ORDERBY = ("date", "modified", "id", "title", "slug")
_WP_EMBEDDABLE = ("author", "wp:featuredmedia", "wp:term")
# WordPress's own check of a date-time parameter (rest_parse_date).
_WP_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)


@dataclass(frozen=True)
class Answer:
    """What the API answers: a status, a JSON body and headers (its type is always JSON)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Site(Protocol):
    """What the API needs of the sample site."""

    @property
    def base_url(self) -> str: ...

    @property
    def articles(self) -> list[dict[str, Any]]: ...

    def article_url(self, slug: str) -> str: ...

    def image_url(self, slug: str) -> str: ...


class WordPressAPI:
    """The posts of ``site`` as a WordPress REST API, built once; ``title`` gives the title a
    post shows (with its marker), ``name`` and ``description`` fill the ``/wp-json`` index."""

    def __init__(
        self,
        site: Site,
        *,
        name: str,
        description: str,
        title: Callable[[dict[str, Any]], str],
    ) -> None:
        self.site = site
        self.base_url = site.base_url
        self.name = name
        self.description = description
        self.title = title
        self.posts: list[dict[str, Any]] = self._posts()

    def _posts(self) -> list[dict[str, Any]]:
        """The articles as WordPress posts (with every ``_embedded`` relation), oldest id first."""
        ids = post_ids(self.site.articles)
        oldest_first = sorted(self.site.articles, key=lambda a: ids[a["slug"]])
        authors = sorted({str(a["author"]) for a in self.site.articles})
        topics = sorted({str(t) for a in self.site.articles for t in a["topics"]})
        category_ids = {name: 2 + index for index, name in enumerate(topics)}
        category_ids[WP_BREAKING_CATEGORY] = 2 + len(topics)
        tag_id = 3 + len(topics)
        api = f"{self.base_url}/wp-json/wp/v2"
        posts = []
        for index, article in enumerate(oldest_first):
            post_id, media_id = ids[article["slug"]], 501 + index
            slug = article["slug"]
            author_id = 1 + authors.index(article["author"])
            categories = [*article["topics"]]
            if article["breaking"]:
                categories.append(WP_BREAKING_CATEGORY)
            tags = [WP_STUDY_TAG] if article.get("study") else []
            terms = [
                [self._term(category_ids[name], name, "category") for name in categories],
                [self._term(tag_id, name, "post_tag") for name in tags],
            ]
            content = "".join(
                f"<h2>{_wp_text(section['heading'])}</h2>\n"
                + "".join(f"<p>{_wp_text(p)}</p>\n" for p in section.get("paragraphs", []))
                for section in article["sections"]
            )
            posts.append(
                {
                    "id": post_id,
                    "date": _wp_date(article["published"], SITE_TIMEZONE),
                    "date_gmt": _wp_date(article["published"], UTC),
                    "guid": {"rendered": f"{self.base_url}/?p={post_id}"},
                    "modified": _wp_date(article["modified"], SITE_TIMEZONE),
                    "modified_gmt": _wp_date(article["modified"], UTC),
                    "slug": slug,
                    "status": "publish",
                    "type": "post",
                    "link": self.site.article_url(slug),
                    "title": {"rendered": _wp_text(self.title(article))},
                    "content": {"rendered": content, "protected": False},
                    "excerpt": {
                        "rendered": f"<p>{_wp_text(article['lead'])} [&hellip;]</p>\n",
                        "protected": False,
                    },
                    "author": author_id,
                    "featured_media": media_id,
                    "categories": [category_ids[name] for name in categories],
                    "tags": [tag_id for _ in tags],
                    "meta": {"breaking": bool(article["breaking"])},
                    "_links": {
                        "self": [{"href": f"{api}/posts/{post_id}"}],
                        "author": [{"embeddable": True, "href": f"{api}/users/{author_id}"}],
                        "wp:featuredmedia": [
                            {"embeddable": True, "href": f"{api}/media/{media_id}"}
                        ],
                        "wp:term": [
                            {
                                "taxonomy": "category",
                                "embeddable": True,
                                "href": f"{api}/categories?post={post_id}",
                            },
                            {
                                "taxonomy": "post_tag",
                                "embeddable": True,
                                "href": f"{api}/tags?post={post_id}",
                            },
                        ],
                    },
                    "_embedded": {
                        "author": [
                            {
                                "id": author_id,
                                "name": article["author"],
                                "slug": _wp_slug(article["author"]),
                                "link": f"{self.base_url}/author/{_wp_slug(article['author'])}/",
                            }
                        ],
                        "wp:featuredmedia": [
                            {
                                "id": media_id,
                                "slug": f"{slug}-image",
                                "type": "attachment",
                                "media_type": "image",
                                "mime_type": "image/svg+xml",
                                "alt_text": article["topics"][0],
                                "source_url": self.site.image_url(slug),
                                "media_details": {"width": 1200, "height": 630},
                            }
                        ],
                        "wp:term": terms,
                    },
                }
            )
        return posts

    def _term(self, term_id: int, name: str, taxonomy: str) -> dict[str, Any]:
        base = "category" if taxonomy == "category" else "tag"
        return {
            "id": term_id,
            "name": _wp_text(name),
            "slug": _wp_slug(name),
            "taxonomy": taxonomy,
            "link": f"{self.base_url}/{base}/{_wp_slug(name)}/",
        }

    def answer(self, path: str, query: str) -> Answer:
        """Answer a request under ``/wp-json`` the way WordPress does."""
        if path in ("/wp-json", "/wp-json/"):
            index = {
                "name": self.name,
                "description": self.description,
                "url": self.base_url,
                "home": self.base_url,
                "gmt_offset": "7",
                "timezone_string": "Asia/Bangkok",
                "namespaces": ["wp/v2"],
            }
            return _wp_json(200, index)
        if path.rstrip("/") != WP_POSTS:
            message = "No route was found matching the URL and request method."
            return _wp_error(404, "rest_no_route", message)
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        wrong = _wp_wrong_params(params)
        if wrong:
            data = {"status": 400, "params": wrong}
            body = {
                "code": "rest_invalid_param",
                "message": f"Invalid parameter(s): {', '.join(wrong)}",
                "data": data,
            }
            return _wp_json(400, body)
        per_page = int(params.get("per_page", WP_PER_PAGE))
        page = int(params.get("page", 1))
        posts = self.posts
        for name, field_name in (("after", "date_gmt"), ("modified_after", "modified_gmt")):
            if name in params:
                since = _wp_parse_date(params[name])
                posts = [p for p in posts if _wp_gmt(p[field_name]) > since]
        orderby = params.get("orderby", "date")
        sort_field = {"date": "date_gmt", "modified": "modified_gmt"}.get(orderby, orderby)
        posts = sorted(
            posts,
            key=lambda p: (_wp_sort_value(p, sort_field), p["id"]),
            reverse=params.get("order", "desc") == "desc",
        )
        total = len(posts)
        pages = math.ceil(total / per_page)
        if total and page > pages:
            message = "The page number requested is larger than the number of pages available."
            return _wp_error(400, "rest_post_invalid_page_number", message)
        chosen = posts[(page - 1) * per_page : page * per_page]
        if "_embed" not in params:
            chosen = [{k: v for k, v in p.items() if k != "_embedded"} for p in chosen]
        elif params["_embed"] not in ("", "1", "true"):
            wanted = {rel.strip() for rel in params["_embed"].split(",")}
            chosen = [
                {**p, "_embedded": {k: v for k, v in p["_embedded"].items() if k in wanted}}
                for p in chosen
            ]
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        for rel, other in (("prev", page - 1), ("next", page + 1)):
            if 1 <= other <= pages:
                other_query = "&".join(
                    f"{quote(k)}={quote(v)}" for k, v in {**params, "page": str(other)}.items()
                )
                links.append(f'<{self.base_url}{WP_POSTS}?{other_query}>; rel="{rel}"')
        if links:
            headers["Link"] = ", ".join(links)
        return _wp_json(200, chosen, headers)


def _wp_date(moment: datetime, zone: timezone) -> str:
    """A date the way WordPress writes it: in ``zone``, without an offset."""
    return moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S")


def _wp_gmt(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _wp_parse_date(value: str) -> datetime:
    """A date-time parameter; without an offset it is in the site's time zone, as in WordPress."""
    moment = datetime.fromisoformat(value.replace(" ", "T").replace("t", "T"))
    return moment if moment.tzinfo else moment.replace(tzinfo=SITE_TIMEZONE)


def _wp_sort_value(post: dict[str, Any], field_name: str) -> Any:
    value = post[field_name]
    return value["rendered"].casefold() if isinstance(value, dict) else value


def _wp_wrong_params(params: dict[str, str]) -> dict[str, str]:
    """What WordPress would refuse among the parameters the sample API knows."""
    wrong = {}
    for name, low, high in (("per_page", 1, WP_MAX_PER_PAGE), ("page", 1, None)):
        value = params.get(name)
        if value is None:
            continue
        if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            limit = f" and {high} (inclusive)" if high is not None else ""
            wrong[name] = f"{name} must be between {low} (inclusive){limit}."
    if params.get("orderby", "date") not in _WP_ORDERBY:
        wrong["orderby"] = f"orderby is not one of {', '.join(_WP_ORDERBY)}."
    if params.get("order", "desc") not in ("asc", "desc"):
        wrong["order"] = "order is not one of asc, desc."
    for name in ("after", "modified_after"):
        if name in params:
            try:
                if not _WP_DATE_TIME.match(params[name]):
                    raise ValueError(params[name])
                _wp_parse_date(params[name])
            except ValueError:
                wrong[name] = "Invalid date."
    return wrong


def _wp_text(text: str) -> str:
    """Text as WordPress renders it: escaped, with curly quotes as numeric entities."""
    out = html.escape(str(text), quote=False).replace("&amp;", "&#038;").replace("'", "&#8217;")
    parts = out.split('"')
    return parts[0] + "".join(
        ("&#8220;" if index % 2 else "&#8221;") + part for index, part in enumerate(parts[1:], 1)
    )


def _wp_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-")


def _wp_json(status: int, data: object, headers: dict[str, str] | None = None) -> Answer:
    # PHP's json_encode escapes slashes and non-ASCII characters; so does this.
    body = json.dumps(data).replace("/", "\\/").encode("ascii")
    return Answer(status, body, dict(headers or {}))


def _wp_error(status: int, code: str, message: str) -> Answer:
    return _wp_json(status, {"code": code, "message": message, "data": {"status": status}})


def post_ids(articles: list[dict[str, Any]]) -> dict[str, int]:
    """The WordPress post id of each article (by slug): 101, 102 ... oldest first. The RSS feed
    uses the same ids in its GUIDs (``BASE/?p=ID``), as a WordPress site's own feed does."""
    oldest_first = sorted(articles, key=lambda a: (a["published"], a["slug"]))
    return {article["slug"]: 101 + index for index, article in enumerate(oldest_first)}
