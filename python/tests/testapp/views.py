from django.shortcuts import render

from .models import Article


def page(request):
    return render(request, "testapp/page.html", {"articles": Article.objects.order_by("pk"), "open": {"status": "open"}})
