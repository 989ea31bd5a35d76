from telegraphy.django import ModelEvents

from .models import Article, Note, Payroll


class ArticleEvents(ModelEvents):
    model = Article
    exclude = ["body"]
    verbose_name = "Articles"


class PayrollEvents(ModelEvents):
    model = Payroll
    name = "hr.payroll"
    operations = ("create", "update")

    def is_authorized(self, user):
        return user.is_staff

    def to_dict(self, instance):
        return {"id": instance.pk, "employee": instance.employee, "salary_k": instance.salary // 1000}


class NoteEvents(ModelEvents):
    model = "testapp.Note"
    fields = ["text", "owner"]
    history = True

    def recipients(self, instance):
        return [instance.owner]
