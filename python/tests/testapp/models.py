from django.conf import settings
from django.db import models


class Article(models.Model):
    title = models.CharField(max_length=100)
    body = models.TextField(blank=True)
    status = models.CharField(max_length=10, default="draft")
    price = models.DecimalField(max_digits=6, decimal_places=2, default=0)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(auto_now_add=True)

    def headline(self):
        return self.title.upper()


class Payroll(models.Model):
    """Only staff may see these events."""

    employee = models.CharField(max_length=50)
    salary = models.IntegerField()


class Note(models.Model):
    """Events only for the note's owner (recipients)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.CharField(max_length=100)
