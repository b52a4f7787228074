from django.urls import path

from contexts import views

app_name = "contexts"

urlpatterns = [
    path("", views.context_list_page, name="list"),
    path("<int:context_id>/", views.context_detail_page, name="detail"),
]
